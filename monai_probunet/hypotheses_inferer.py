"""The inference chain's middle step: :class:`HypothesesInferer` (S hypotheses' logits, re-seeded per image) and the
loop that runs a case through preprocessing, inferer and postprocessing (:func:`run_hypotheses`,
:func:`apply_inferer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from monai.inferers import Inferer
from monai.transforms import Compose

from .hypotheses import Hypotheses

__all__ = [
    "HypothesesInferer",
    "apply_inferer",
    "run_hypotheses",
]


class HypothesesInferer(Inferer):
    """S hypotheses' logits of each image: ``network.sample(inputs, num_samples, generator)``, re-seeded per call.

    The call of :class:`~monai_probunet.engines.SamplingInferer` with ``return_labels=False`` and fp32 (DDP
    unwrapped, a private generator seeded with ``seed``), re-seeded at every call so that each image gets the same
    latent draws for the same seed, and without ignite (the engines' dependency), so that a one-image run imports
    only MONAI and torch.

    Args:
        num_samples: S.
        seed: seed of the latent-noise generator; every call starts from it (same seed, same hypotheses).

    Shapes:
        ``inputs``: ``B x 1 x H x W``; returns float logits ``B x S x C x H x W``.

    Raises:
        TypeError: the network has no ``sample`` method.
        ValueError: ``num_samples < 1``, or the network returned another shape.
    """

    def __init__(self, num_samples: int = 16, seed: int = 0) -> None:
        super().__init__()
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.seed = int(seed)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        model = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
        if not hasattr(model, "sample"):
            raise TypeError(f"{type(model).__name__} has no sample(image, num_samples) method.")
        generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        with torch.no_grad():
            logits = model.sample(inputs, self.num_samples, generator=generator).float()
        b, s = inputs.shape[0], self.num_samples
        if logits.ndim != 5 or logits.shape[:2] != (b, s) or tuple(logits.shape[3:]) != tuple(inputs.shape[2:]):
            expected = f"{b} x {s} x C x {tuple(inputs.shape[2:])}"
            raise ValueError(f"model.sample returned shape {tuple(logits.shape)}, expected {expected}.")
        return logits


def _unwrap(e: RuntimeError) -> BaseException:
    """The error a transform raised inside ``Compose`` (MONAI wraps it in ``RuntimeError("applying transform")``)."""
    cause: BaseException = e
    while (
        isinstance(cause, RuntimeError)
        and cause.__cause__ is not None
        and str(cause).startswith("applying transform")
    ):
        cause = cause.__cause__
    return cause


def _apply(chain: Compose, data: dict) -> dict:
    try:
        return chain(data)
    except RuntimeError as e:
        cause = _unwrap(e)
        if cause is e:
            raise
        raise cause from None


def run_hypotheses(
    case: Mapping[str, Any],
    network: nn.Module,
    preprocessing: Compose,
    inferer: HypothesesInferer,
    postprocessing: Compose,
    device: str | torch.device = "cpu",
) -> Hypotheses:
    """Run one case through ``preprocessing``, ``inferer`` and ``postprocessing``.

    Errors raised by a transform (``ValueError`` for bad input, ``FileNotFoundError``) come out as raised, not
    wrapped in MONAI's ``RuntimeError("applying transform ...")``.

    Args:
        case: ``{"image": path or MetaTensor, "center": [...], "world": bool, "frame": "RAS" | "LPS"}``.
        network: a model with ``sample(image, num_samples, generator)``; moved to ``device``, eval mode.
        preprocessing: :func:`~monai_probunet.inference_preprocess.inference_preprocessing`.
        inferer: :class:`HypothesesInferer`.
        postprocessing: :func:`~monai_probunet.inference_postprocess.inference_postprocessing`.
        device: where the model runs.

    Returns:
        The :class:`~monai_probunet.hypotheses.Hypotheses` of the case.
    """
    data = _apply(preprocessing, dict(case))
    data = apply_inferer(data, network, inferer, device=device)
    data = _apply(postprocessing, data)
    return data["hypotheses"]


def apply_inferer(
    data: dict, network: nn.Module, inferer: HypothesesInferer, device: str | torch.device = "cpu"
) -> dict:
    """The step between ``preprocessing`` and ``postprocessing``: the inferer on the case's model input.

    Args:
        data: the case after :func:`~monai_probunet.inference_preprocess.inference_preprocessing`
            (``model_input``: ``1 x H x W``).
        network: a model with ``sample``; moved to ``device``, eval mode.
        inferer: :class:`HypothesesInferer`.
        device: where the model runs.

    Returns:
        ``data`` with ``pred`` (logits ``1 x S x C x H x W``), ``seed`` (the inferer's) and ``prior_sampling`` (the
        network's, ``None`` without one).
    """
    device = torch.device(device)
    x = data["model_input"][None].to(device)  # 1 x 1 x roi x roi
    network = network.to(device).eval()
    data["pred"] = inferer(x, network)
    data["seed"] = inferer.seed
    data["prior_sampling"] = getattr(getattr(network, "module", network), "prior_sampling", None)
    return data

