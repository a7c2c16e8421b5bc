"""The inference chain as MONAI pieces: dictionary transforms, the sampling inferer and the loop that composes them.

One implementation serves :func:`~monai_probunet.predict.predict_hypotheses` (and through it the 3-D mode, the CLI,
batch inference and the MONAI Label task) and the bundle's ``inference.yaml`` (ids ``preprocessing``, ``inferer``,
``postprocessing``): both build the pieces with the factories below and run them with :func:`run_hypotheses`.

A case is a dictionary ``{"image": path or MetaTensor, "center": [...], "world": bool, "frame": "RAS" | "LPS"}``:

* :func:`inference_preprocessing`: :class:`LoadCTd` (load and check the CT), :class:`CheckHypothesesMemoryd`,
  :class:`ResolveCenterd` (the centre as voxel and RAS world coordinates), :class:`AxialSliced` (the axial slice
  through the centre of a volume), ``CastToTyped`` + ``ScaleIntensityRanged`` (the HU window, as in training),
  :class:`ModelGridd` (``Spacingd`` to the model's spacing, ``SpatialPadd`` continuing the image's border,
  ``SpatialCropd`` of the model's field around the centre; the per-case chain is kept for ``Invertd``) and
  :class:`ModelInputd`.
* :class:`HypothesesInferer`: the call of :class:`~monai_probunet.engines.SamplingInferer` returning the logits of S
  hypotheses, the latent noise re-seeded for every image (same seed, same hypotheses).
* :func:`inference_postprocessing`: :class:`HypothesesFromLogitsd` (label maps, mean probability and entropy on
  the model's grid), :class:`InvertModelGridd` (``Invertd`` of the case's chain back onto the slice's grid),
  :class:`ToInputGridd` (the slice written into the input's grid), :class:`PresenceSummaryd` (presence,
  ambiguity, areas, variants) and :class:`ToHypothesesd` (the :class:`~monai_probunet.hypotheses.Hypotheses`).

:func:`run_hypotheses` runs one case through the three; :func:`apply_inferer` is its middle step (the MONAI Label
task runs the same three steps as its pre-transforms, inferer and post-transforms).

The pieces live in :mod:`.inference_preprocess`, :mod:`.hypotheses_inferer` and :mod:`.inference_postprocess`;
this module gathers them under one import path (the bundle's ``_target_`` paths).
"""

from __future__ import annotations

from .hypotheses_inferer import HypothesesInferer, apply_inferer, run_hypotheses  # noqa: F401
from .inference_postprocess import (
    HypothesesFromLogitsd,
    InvertModelGridd,
    PresenceSummaryd,
    ToHypothesesd,
    ToInputGridd,
    inference_postprocessing,
)
from .inference_preprocess import (
    MAX_HYPOTHESES_BYTES,
    PADDING_MODES,
    AxialSliced,
    CheckHypothesesMemoryd,
    LoadCTd,
    ModelGridd,
    ModelInputd,
    ResolveCenterd,
    inference_preprocessing,
)

__all__ = [
    "MAX_HYPOTHESES_BYTES",
    "PADDING_MODES",
    "AxialSliced",
    "CheckHypothesesMemoryd",
    "HypothesesFromLogitsd",
    "HypothesesInferer",
    "InvertModelGridd",
    "LoadCTd",
    "ModelGridd",
    "ModelInputd",
    "PresenceSummaryd",
    "ResolveCenterd",
    "ToHypothesesd",
    "ToInputGridd",
    "apply_inferer",
    "inference_postprocessing",
    "inference_preprocessing",
    "run_hypotheses",
]
