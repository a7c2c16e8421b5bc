"""Generalized energy distance (paper Eq. 5-7), as a function and as a MONAI cumulative metric."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from monai.metrics import CumulativeIterationMetric

from .distances import joint_iou_distance

__all__ = ["GEDTerms", "generalized_energy_distance", "GeneralizedEnergyDistanceMetric", "GED_TERMS"]

GED_TERMS = ("ged", "d_sy", "d_ss", "d_yy")


class GEDTerms(NamedTuple):
    """Per-image squared GED and its three expectations, each of shape ``B``."""

    ged: torch.Tensor
    d_sy: torch.Tensor
    d_ss: torch.Tensor
    d_yy: torch.Tensor


def generalized_energy_distance(
    samples: torch.Tensor,
    targets: torch.Tensor,
    target_weights: torch.Tensor | None = None,
    classes: Sequence[int] = (1,),
) -> GEDTerms:
    """Squared generalized energy distance ``D^2 = 2 E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')]`` per image.

    V-statistic over all pairs (self-pairs included), with ``d = 1 - IoU`` (:func:`pairwise_iou_distance`).
    Without ``target_weights`` this is Eq. 6 (targets are m samples of the ground truth, e.g. graders); with
    them it is Eq. 7 (targets are the modes of a known mixture with weights omega). Note that the estimate falls
    as S grows (self-pairs), so always report S.

    Args:
        samples: ``B x S x *spatial`` sampled label maps.
        targets: ``B x A x *spatial`` ground-truth label maps (graders, or mixture modes).
        target_weights: optional ``B x A`` (or ``A``) mixture weights, each row summing to 1.
        classes: classes whose IoU is averaged; ``(1,)`` for binary lesion masks.

    Returns:
        :class:`GEDTerms` of four ``B`` tensors.
    """
    if samples.shape[0] != targets.shape[0] or samples.shape[2:] != targets.shape[2:]:
        raise ValueError(
            f"samples (B x S x *spatial) and targets (B x A x *spatial) must agree in B and spatial shape, "
            f"got {tuple(samples.shape)} and {tuple(targets.shape)}."
        )
    n = samples.shape[1]
    # one Gram matrix over the joint set [samples; targets] gives all three distance blocks in a single pass
    d = joint_iou_distance([samples.to(targets.dtype), targets], classes)
    d_ss, d_sy, d_yy = d[:, :n, :n], d[:, :n, n:], d[:, n:, n:]
    if target_weights is None:
        e_sy, e_yy = d_sy.mean(dim=(1, 2)), d_yy.mean(dim=(1, 2))
    else:
        w = torch.as_tensor(target_weights, dtype=d_sy.dtype, device=d_sy.device)
        w = w.expand(d_sy.shape[0], d_sy.shape[2])
        e_sy = (d_sy * w.unsqueeze(1)).sum(dim=2).mean(dim=1)
        e_yy = torch.einsum("ba,bac,bc->b", w, d_yy, w)
    e_ss = d_ss.mean(dim=(1, 2))
    return GEDTerms(2 * e_sy - e_ss - e_yy, e_sy, e_ss, e_yy)


class GeneralizedEnergyDistanceMetric(CumulativeIterationMetric):
    """Squared GED (Eq. 6) accumulated over iterations; lower is better.

    ``y_pred`` holds the S sampled label maps in its channel dimension and ``y`` the A grader masks in its
    channel dimension. Each iteration buffers a ``B x 4`` tensor: GED, E[d(S,Y)], E[d(S,S')], E[d(Y,Y')].

    Args:
        classes: classes whose IoU is averaged; ``(1,)`` for binary lesion masks.
        term: which column :meth:`aggregate` averages: one of ``"ged"``, ``"d_sy"``, ``"d_ss"``, ``"d_yy"``.

    Shapes:
        ``y_pred``: ``B x S x *spatial``; ``y``: ``B x A x *spatial``.
    """

    def __init__(self, classes: Sequence[int] = (1,), term: str = "ged") -> None:
        super().__init__()
        if term not in GED_TERMS:
            raise ValueError(f"term must be one of {GED_TERMS}, got {term!r}.")
        self.classes = tuple(classes)
        self.term = term

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("GeneralizedEnergyDistanceMetric needs the grader masks as y.")
        return torch.stack(generalized_energy_distance(y_pred, y, classes=self.classes), dim=1)

    def aggregate_terms(self) -> dict[str, float]:
        """Means over all buffered images of the four terms."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("GeneralizedEnergyDistanceMetric has no buffered data to aggregate.")
        means = data.float().mean(dim=0)
        return {name: float(means[i]) for i, name in enumerate(GED_TERMS)}

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """Mean over all buffered images of the selected ``term``."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("GeneralizedEnergyDistanceMetric has no buffered data to aggregate.")
        return data.float()[:, GED_TERMS.index(self.term)].mean()
