"""Sampling: :func:`predict_hypotheses`, S segmentation hypotheses of the lesion at a centre on the input's own grid.

The steps (load, slice, window, resample, pad, crop, sample, map back with ``Invertd``) and the coordinate
conventions are described in :mod:`monai_probunet.inference`, the package's public face for this function. They are
the MONAI pieces of :mod:`monai_probunet.inference_transforms` (the bundle's ``preprocessing``, ``inferer`` and
``postprocessing`` ids), built here from the arguments and run by its
:func:`~monai_probunet.inference_transforms.run_hypotheses`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor

from .ct_io import DEFAULT_HU_WINDOW, DEFAULT_ROI_SIZE
from .hypotheses import FALLBACK_RULE, Hypotheses
from .inference_transforms import (
    MAX_HYPOTHESES_BYTES,
    HypothesesInferer,
    inference_postprocessing,
    inference_preprocessing,
    run_hypotheses,
)
from .metrics import PresenceThreshold

__all__ = ["MAX_HYPOTHESES_BYTES", "check_sampling_arguments", "predict_hypotheses"]


def check_sampling_arguments(num_samples: object, seed: object, model: object) -> None:
    """Refuse sampling arguments that cannot draw hypotheses (shared by the 2-D and 3-D entry points).

    Args:
        num_samples: S, must be an integer >= 1 (``bool`` is refused).
        seed: Must be an integer (``bool`` is refused).
        model: Must have a ``sample(image, num_samples, generator)`` method.

    Raises:
        ValueError: Naming the first argument that is wrong and what was expected.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    if not hasattr(model, "sample"):
        raise ValueError(f"model {type(model).__name__} has no sample(image, num_samples, generator) method.")


def predict_hypotheses(
    image: str | os.PathLike | MetaTensor,
    center: Sequence[float],
    model: nn.Module,
    *,
    world: bool = False,
    frame: str = "RAS",
    spacing: float | Sequence[float] | None = None,
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    num_samples: int = 16,
    seed: int = 0,
    threshold: PresenceThreshold | str | os.PathLike | Mapping | None = None,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    device: str | torch.device = "cpu",
    allow_non_ct: bool = False,
    padding_mode: str = "edge",
    dicom_headers: Sequence[Any] | None = None,
) -> Hypotheses:
    """Draw S segmentation hypotheses of the lesion at ``center`` and map them onto the input's grid.

    Args:
        image: 2-D CT slice (NIfTI or one DICOM file) or 3-D CT volume (NIfTI or a DICOM series folder) in HU, or a
            loaded channel-first ``MetaTensor`` ``1 x *spatial`` (see :func:`load_ct`).
        center: Lesion centre: voxel coordinates of the loaded array, or world mm with ``world=True`` (module
            docstring).
        model: A network with ``sample(image B x 1 x H x W, num_samples, generator) -> B x S x C x H x W`` logits
            (:class:`~monai_probunet.networks.ProbUNet` and the baselines); put into eval mode.
        world: ``center`` is in world coordinates.
        frame: ``{"RAS", "LPS"}``: World frame of ``center``.
        spacing: The model's in-plane pixel spacing in mm (required: ``infer_spacing`` of the model's bundle config, see
            :func:`~monai_probunet.model_loading.load_model`; there is no default, a wrong spacing silently rescales
            every lesion).
        roi_size: The model's crop size in pixels. The image must cover it at ``spacing`` (an image smaller than the
            model's field is refused rather than padded); where the crop reaches past the image border (a centre near
            the edge) the outside is filled by ``padding_mode`` and hypotheses there are dropped, so areas and presence
            count only image pixels.
        num_samples: S, hypotheses to draw (16 in the paper).
        seed: Seed of the latent-noise generator (same seed, same hypotheses).
        threshold: The fitted lesion-presence rule (or the path of ``presence_threshold.json``); ``None``: the
            :data:`FALLBACK_RULE` with a warning.
        hu_window: HU range scaled to ``[0, 1]`` with clipping (as in training).
        device: Where the model runs (it is moved there).
        allow_non_ct: Warn instead of refusing when an image without a DICOM modality has intensities that are not
            plausibly HU (:func:`load_ct`).
        padding_mode: ``"edge"`` (repeat the border pixels) or ``"constant"`` (air) beyond the image border
            (:class:`~monai_probunet.inference_transforms.ModelGridd`).
        dicom_headers: For a DICOM series folder or file: its files' headers where the caller has read them
            (:func:`load_ct`), so that they are not read again.

    Returns:
        Hypotheses: Label maps ``S x *spatial``, mean probability and entropy ``*spatial``, presence probability,
            ambiguous flag, areas/volumes and variants.

    Raises:
        ValueError: For a bad image (NaN/inf voxels, wrong rank or channels, non-CT DICOM or non-HU intensities,
            unreadable file, zero/negative spacing, smaller than the model's field), a centre outside the image, or bad
            parameters.
        FileNotFoundError: If the image path does not exist.
    """
    check_sampling_arguments(num_samples, seed, model)
    preprocessing = inference_preprocessing(
        spacing, roi_size=roi_size, hu_window=hu_window, num_samples=int(num_samples), allow_non_ct=allow_non_ct,
        padding_mode=padding_mode,
    )
    postprocessing = inference_postprocessing(threshold)
    device = torch.device(device)
    inferer = HypothesesInferer(num_samples=int(num_samples), seed=int(seed))
    case = {"image": image, "center": center, "world": world, "frame": frame}
    if dicom_headers is not None:
        case["dicom_headers"] = dicom_headers
    hyp = run_hypotheses(case, model, preprocessing, inferer, postprocessing, device=device)
    if hyp.threshold is None:
        warnings.warn(f"no fitted presence threshold given: {FALLBACK_RULE}.", UserWarning, stacklevel=2)
    return hyp
