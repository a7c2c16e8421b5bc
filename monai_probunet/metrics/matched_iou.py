"""Hungarian-matched IoU between a sample set and a ground-truth set, and sample diversity."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .distances import pairwise_iou_distance

__all__ = ["hungarian_matched_iou", "sample_diversity"]


def _check_set(x: torch.Tensor, name: str, set_name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape B x {set_name} x *spatial, got {type(x).__name__}.")
    if x.ndim < 3:
        raise ValueError(f"{name} must have shape B x {set_name} x *spatial (at least 3 dims), got {tuple(x.shape)}.")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must hold at least one map per image ({set_name} >= 1), got {tuple(x.shape)}.")


def hungarian_matched_iou(
    samples: torch.Tensor, targets: torch.Tensor, classes: Sequence[int] = (1,)
) -> torch.Tensor:
    """Mean IoU of the best one-to-one matching between samples and targets, per image.

    Definition. Let ``d(x, y) = 1 - IoU(x, y)`` be :func:`pairwise_iou_distance` (IoU averaged over the classes
    present in ``x`` or ``y``; a pair in which every class is absent from both maps has IoU 1, i.e. empty vs
    empty counts as a perfect match). Both sets are replicated to ``L = lcm(S, A)`` elements (the samples
    ``L / S`` times, the targets ``L / A`` times), which makes the assignment one-to-one and uses every sample
    and every target equally often (the convention of PHiSeg / Stochastic Segmentation Networks evaluation).
    With ``C[i, j] = d(s_{i mod S}, y_{j mod A})`` (an ``L x L`` cost) and ``pi`` the permutation minimising
    ``sum_i C[i, pi(i)]`` (``scipy.optimize.linear_sum_assignment``), the result is::

        matched_iou = 1 - (1 / L) * sum_i C[i, pi(i)]

    i.e. the mean IoU over the ``L`` matched pairs, in ``[0, 1]``; higher is better.

    Args:
        samples: ``B x S x *spatial`` integer (or bool) label maps, e.g. S sampled segmentations per image.
        targets: ``B x A x *spatial`` label maps, e.g. A grader masks per image; same ``B`` and spatial shape.
        classes: Classes whose IoU is averaged; ``(1,)`` for binary lesion masks.

    Returns:
        ``B`` float32 matched IoU per image, on ``samples.device``.

    Raises:
        ValueError: If the shapes are not ``B x S x *spatial`` / ``B x A x *spatial`` with equal ``B`` and spatial
            shape.

    Note:
        The ``S x A`` distances are computed for the whole batch at once; the assignment itself is solved per image
        (a loop over ``B``) since ``linear_sum_assignment`` takes one cost matrix at a time. ``L`` is at most
        ``S * A`` (e.g. S = 16, A = 4 gives L = 16).
    """
    _check_set(samples, "samples", "S")
    _check_set(targets, "targets", "A")
    if samples.shape[0] != targets.shape[0] or samples.shape[2:] != targets.shape[2:]:
        raise ValueError(
            f"samples (B x S x *spatial) and targets (B x A x *spatial) must agree in B and spatial shape, "
            f"got {tuple(samples.shape)} and {tuple(targets.shape)}."
        )
    s, a = samples.shape[1], targets.shape[1]
    big_l = math.lcm(s, a)
    d = pairwise_iou_distance(samples, targets, classes)  # B x S x A, vectorised over the batch
    rows, cols = np.arange(big_l) % s, np.arange(big_l) % a
    cost = d.detach().cpu().double().numpy()[:, rows][:, :, cols]  # B x L x L: entry (i, j) = d(s_{i%S}, y_{j%A})
    out = np.empty(cost.shape[0], dtype=np.float64)
    # Hungarian matching is per image by nature: scipy solves one cost matrix per call.
    from scipy.optimize import linear_sum_assignment  # imported here: scipy is slow to import

    for b in range(cost.shape[0]):
        r, c = linear_sum_assignment(cost[b])
        out[b] = 1.0 - cost[b, r, c].mean()
    return torch.as_tensor(out, dtype=torch.float32, device=samples.device)


def sample_diversity(samples: torch.Tensor, classes: Sequence[int] = (1,)) -> torch.Tensor:
    """Mean pairwise ``1 - IoU`` distance within the sample set, per image: ``E[d(S, S')]``.

    Definition. With ``d`` from :func:`pairwise_iou_distance` (empty vs empty -> distance 0)::

        diversity = (1 / S**2) * sum_{i, j = 1..S} d(s_i, s_j)

    a V-statistic over all ``S**2`` ordered pairs, self-pairs included (whose distance is 0), exactly the
    ``d_ss`` term of :func:`~monai_probunet.metrics.generalized_energy_distance`. It therefore grows towards the
    U-statistic ``sum_{i != j} d / (S (S - 1))`` as S grows, by the factor ``(S - 1) / S``; always report S.
    ``S = 1`` gives 0.

    Args:
        samples: ``B x S x *spatial`` integer (or bool) label maps.
        classes: Classes whose IoU is averaged; ``(1,)`` for binary lesion masks.

    Returns:
        ``B`` float32 diversity per image in ``[0, 1]``.

    Raises:
        ValueError: If ``samples`` is not ``B x S x *spatial`` with ``S >= 1``.
    """
    _check_set(samples, "samples", "S")
    return pairwise_iou_distance(samples, None, classes).mean(dim=(1, 2))
