"""The squared GED against a known mixture of modes (paper Eq. 7), with the ground truth's ignore pixels masked.

For the Cityscapes flip task (paper Sec. 4.2, Appendix B-C) and its synthetic stand-in ``scenes32``:

- :func:`mask_ignored` / :class:`MaskIgnoredd`: sampled pixels where the ground truth is the ignore label become the
  ignore label, so they count for no class ("the ignore label masks [...] mask the metric during evaluation",
  Appendix H.2). Without it, whatever a model paints on the ego-vehicle hood (trained with no loss there) enters the
  IoU of the switchable classes.
- :func:`known_mixture_ged`: Eq. 7, the squared GED against the M modes with weights omega, IoU averaged over the
  switchable classes, a class absent from both maps of a pair left out of the mean (V-statistic, self-pairs
  included; :func:`~monai_probunet.metrics.generalized_energy_distance`).
- :func:`match_modes`: every sample's closest mode (``d = 1 - IoU`` over the switchable classes, ties to the lowest
  mode index), what the calibration analysis (:mod:`monai_probunet.metrics.calibration`) counts.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch

from ..flip_task import IGNORE_INDEX, SWITCHABLE_CLASSES
from .distances import pairwise_iou_distance
from .ged import GEDTerms, generalized_energy_distance

__all__ = ["MaskIgnoredd", "known_mixture_ged", "mask_ignored", "match_modes", "reference_map"]


def reference_map(reference: torch.Tensor, ndim_spatial: int) -> torch.Tensor:
    """``B x *spatial`` from ``B x *spatial`` or ``B x A x *spatial`` (channel 0)."""
    if reference.ndim == ndim_spatial + 2:
        return reference[:, 0]
    if reference.ndim == ndim_spatial + 1:
        return reference
    raise ValueError(
        f"reference must be B x *spatial or B x A x *spatial with {ndim_spatial} spatial dims, got shape "
        f"{tuple(reference.shape)}."
    )


def mask_ignored(samples: torch.Tensor, reference: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Set sampled pixels to ``ignore_index`` where the ground truth is ``ignore_index``.

    Args:
        samples: ``B x S x *spatial`` integer label maps.
        reference: ``B x *spatial`` or ``B x A x *spatial`` ground truth (with A maps their first one is used: the
            ignore region is the same in every grader map and mode).
        ignore_index: the ignore label.

    Returns:
        ``B x S x *spatial``, same dtype as ``samples``.
    """
    if samples.ndim < 3:
        raise ValueError(f"samples must be B x S x *spatial, got shape {tuple(samples.shape)}.")
    ref = reference_map(reference, samples.ndim - 2).to(samples.device)
    if ref.shape[0] != samples.shape[0] or ref.shape[1:] != samples.shape[2:]:
        raise ValueError(f"reference {tuple(reference.shape)} does not match samples {tuple(samples.shape)}.")
    ignore = (ref == ignore_index).unsqueeze(1)
    return torch.where(ignore, torch.full_like(samples, ignore_index), samples)


class MaskIgnoredd:
    """Dict post-processing for an evaluator: :func:`mask_ignored` on ``data[pred_key]`` with ``data[label_key]``.

    For ``SupervisedEvaluator(postprocessing=...)`` with ``decollate=False``: ``pred`` is ``B x S x *spatial``
    (the :class:`~monai_probunet.engines.SamplingInferer` labels) and ``label`` ``B x A x *spatial``.

    Args:
        pred_key: key of the sampled label maps.
        label_key: key of the ground-truth maps.
        ignore_index: the ignore label.
    """

    def __init__(self, pred_key: str = "pred", label_key: str = "label", ignore_index: int = IGNORE_INDEX) -> None:
        self.pred_key, self.label_key, self.ignore_index = pred_key, label_key, int(ignore_index)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in (self.pred_key, self.label_key):
            if key not in d:
                raise KeyError(f"MaskIgnoredd: no {key!r} in the data (keys: {sorted(map(str, d))}).")
        pred, label = d[self.pred_key], d[self.label_key]
        d[self.pred_key] = mask_ignored(torch.as_tensor(pred), torch.as_tensor(label).round().long(), self.ignore_index)
        return d


def known_mixture_ged(
    samples: torch.Tensor,
    modes: torch.Tensor,
    mode_probs: torch.Tensor | Sequence[float],
    classes: Sequence[int] = SWITCHABLE_CLASSES,
    ignore_index: int | None = IGNORE_INDEX,
) -> GEDTerms:
    """Squared GED against a known mixture (paper Eq. 7), sampled pixels in ignore regions masked.

    ``2/n sum_i sum_j w_j d(S_i, Y_j) - 1/n**2 sum_ii' d(S_i, S_i') - sum_jj' w_j w_j' d(Y_j, Y_j')`` with
    ``d = 1 - mean IoU`` over ``classes`` (classes absent from both maps of a pair left out of the mean).

    Args:
        samples: ``B x S x *spatial`` integer label maps.
        modes: ``B x M x *spatial`` modes (zero-weight padding allowed).
        mode_probs: ``B x M`` (or ``M``) weights, each row summing to 1.
        classes: classes whose IoU is averaged (default: the 10 switchable classes).
        ignore_index: ignore label of the modes (``None``: no masking).

    Returns:
        :class:`~monai_probunet.metrics.GEDTerms` of four ``B`` tensors (ged, d_sy, d_ss, d_yy).
    """
    w = torch.as_tensor(mode_probs, dtype=torch.float64)
    if w.ndim == 1:
        w = w.unsqueeze(0).expand(modes.shape[0], -1)
    if w.shape != modes.shape[:2]:
        raise ValueError(f"mode_probs {tuple(w.shape)} must be B x M for modes {tuple(modes.shape)}.")
    if (w < 0).any() or not torch.allclose(w.sum(1), torch.ones(w.shape[0], dtype=w.dtype), atol=1e-6):
        raise ValueError(f"mode_probs must be non-negative and sum to 1 per image, got sums {w.sum(1).tolist()}.")
    if ignore_index is not None:
        samples = mask_ignored(samples, modes, ignore_index)
    return generalized_energy_distance(samples, modes.to(samples.dtype), w.float().to(samples.device), classes)


def match_modes(
    samples: torch.Tensor,
    modes: torch.Tensor,
    num_modes: torch.Tensor | Sequence[int] | None = None,
    classes: Sequence[int] = SWITCHABLE_CLASSES,
    ignore_index: int | None = IGNORE_INDEX,
) -> torch.Tensor:
    """Index of the closest mode of every sample (``d = 1 - IoU`` over ``classes``; ties: lowest index).

    Args:
        samples: ``B x S x *spatial`` label maps.
        modes: ``B x M x *spatial`` modes, padded after the first ``num_modes[b]``.
        num_modes: ``B`` numbers of valid modes (default: all M).
        classes: classes whose IoU is averaged.
        ignore_index: ignore label of the modes (``None``: no masking).

    Returns:
        ``B x S`` int64 mode indices.
    """
    if samples.shape[0] != modes.shape[0] or samples.shape[2:] != modes.shape[2:]:
        raise ValueError(f"samples {tuple(samples.shape)} and modes {tuple(modes.shape)} differ in B or spatial shape.")
    if ignore_index is not None:
        samples = mask_ignored(samples, modes, ignore_index)
    d = pairwise_iou_distance(samples, modes.to(samples.dtype), classes)  # B x S x M
    if num_modes is not None:
        n = torch.as_tensor(num_modes, device=d.device).view(-1, 1, 1)
        d = torch.where(torch.arange(d.shape[2], device=d.device).view(1, 1, -1) < n, d, torch.full_like(d, 2.0))
    return d.argmin(dim=2)
