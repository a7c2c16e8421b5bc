"""Per-image scores of S sampled label maps against the graders and the known modes, for nested S.

For every image the first S of ``max(sample_counts)`` draws are scored for each S, so the curves over S are nested
(the S = 4 set is contained in the S = 8 set) and one distance matrix serves all S.

Per-image metrics, for each S (``d(x, y) = 1 - IoU(x, y)``, IoU averaged over ``classes``, a pair in which every
class is absent from both maps has ``d = 0``, i.e. empty-empty = 0):

- ``ged``: squared GED against the A graders, Eq. 6 as a V-statistic (self-pairs included):
  ``2 d_sy - d_ss - d_yy`` with ``d_sy = mean_ij d(s_i, y_j)``, ``d_ss = mean_ii' d(s_i, s_i')``,
  ``d_yy = mean_jj' d(y_j, y_j')``.
- ``ged_modes``: Eq. 7 against the known mixture (modes ``Y_j`` with weights ``w_j``):
  ``2 d_sy_modes - d_ss - d_yy_modes`` with ``d_sy_modes = mean_i sum_j w_j d(s_i, Y_j)`` and
  ``d_yy_modes = sum_jj' w_j w_j' d(Y_j, Y_j')``; NaN where the datalist has no modes.
- ``matched_iou``: Hungarian-matched IoU between the S samples and the A graders
  (:func:`~monai_probunet.metrics.hungarian_matched_iou`, both sets replicated to ``lcm(S, A)``); higher is better.
- ``diversity``: ``E[d(S, S')]`` over all ``S**2`` ordered pairs, i.e. ``d_ss``
  (:func:`~monai_probunet.metrics.sample_diversity`).
- ``presence_count``: samples (of the first S) containing any non-zero pixel.

Per image (not per S): ``ambiguous`` (graders disagree on lesion presence, Appendix E). The lesion-presence rule of
Appendix E is fitted on the validation split (:func:`~monai_probunet.metrics.fit_presence_threshold`) from the counts at
``presence_samples`` (16 in the paper) and its accuracy reported on the test split.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..metrics import hungarian_matched_iou, lesion_presence_counts, pairwise_iou_distance

__all__ = ["ESTIMATOR", "METRICS", "check_sample_counts", "resolve_classes", "score_samples"]

#: the estimator every GED number of this module is, stated in every output
ESTIMATOR = "squared GED, V-statistic, d = 1 - IoU, empty-empty = 0"
#: per-image metrics, each an ``N x len(sample_counts)`` array in :attr:`EvaluationResult.values`
METRICS = (
    "ged",
    "d_sy",
    "d_ss",
    "d_yy",
    "ged_modes",
    "d_sy_modes",
    "d_yy_modes",
    "matched_iou",
    "diversity",
    "presence_count",
)


def check_sample_counts(sample_counts: Sequence[int], max_samples: int | None) -> tuple[tuple[int, ...], int]:
    """The sorted distinct S values and the draws per image (``max_samples``, default the largest S)."""
    counts = sorted({int(s) for s in sample_counts})
    if not counts or counts[0] < 1 or any(float(s) != int(s) for s in sample_counts):
        raise ValueError(f"sample_counts must be positive integers, got {list(sample_counts)}.")
    smax = counts[-1] if max_samples is None else int(max_samples)
    if smax < counts[-1]:
        raise ValueError(f"max_samples ({smax}) must be >= the largest sample count ({counts[-1]}).")
    return tuple(counts), smax


def resolve_classes(classes: Sequence[int] | None, num_classes: int) -> tuple[int, ...]:
    """The classes whose IoU is averaged: ``classes``, or ``1 .. num_classes - 1``."""
    if classes is None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}.")
        return tuple(range(1, num_classes))
    if not len(classes):
        raise ValueError("classes must name at least one class.")
    return tuple(int(c) for c in classes)


def score_samples(
    samples: torch.Tensor,
    graders: torch.Tensor,
    modes: torch.Tensor,
    mode_weights: torch.Tensor,
    has_modes: torch.Tensor,
    sample_counts: Sequence[int],
    classes: Sequence[int],
) -> dict[str, torch.Tensor]:
    """Per-image metrics for each nested S, from one distance matrix over samples, graders and modes.

    Args:
        samples: ``B x Smax x *spatial`` labels.
        graders: ``B x A x *spatial`` labels.
        modes: ``B x M x *spatial`` labels, zero-padded to the batch's largest M (``M = 0`` allowed).
        mode_weights: ``B x M`` mode probabilities, 0 on padding.
        has_modes: ``B`` bool, whether the image's distribution is known.
        sample_counts: the S values, each ``<= Smax``.
        classes: classes whose IoU is averaged.

    Returns:
        ``{metric: B x K float64}`` for the metrics of :data:`METRICS`, K = ``len(sample_counts)``.
    """
    smax, a, m = samples.shape[1], graders.shape[1], modes.shape[1]
    joint = torch.cat([samples.long(), graders.long(), modes.long()], dim=1)
    d = pairwise_iou_distance(joint, None, classes).double()  # B x T x T, T = Smax + A + M
    ys, ms = slice(smax, smax + a), slice(smax + a, smax + a + m)
    # nested S: prefix sums give the top-left S x S block sums of every S at once
    ss_cum = d[:, :smax, :smax].cumsum(1).cumsum(2)  # B x Smax x Smax
    sy_cum = d[:, :smax, ys].mean(2).cumsum(1)  # B x Smax: sum_{i<=S} mean_j d(s_i, y_j)
    d_yy = d[:, ys, ys].mean(dim=(1, 2))
    nan = torch.full_like(d_yy, float("nan"))
    if m:
        w = mode_weights.to(d)
        sm_cum = (d[:, :smax, ms] * w.unsqueeze(1)).sum(2).cumsum(1)
        d_yy_m = torch.where(has_modes, torch.einsum("bi,bij,bj->b", w, d[:, ms, ms], w), nan)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in METRICS}
    for s in sample_counts:
        d_ss = ss_cum[:, s - 1, s - 1] / s**2
        d_sy = sy_cum[:, s - 1] / s
        out["ged"].append(2 * d_sy - d_ss - d_yy)
        out["d_sy"].append(d_sy)
        out["d_ss"].append(d_ss)
        out["d_yy"].append(d_yy)
        out["diversity"].append(d_ss)
        if m:
            d_sy_m = torch.where(has_modes, sm_cum[:, s - 1] / s, nan)
            out["ged_modes"].append(2 * d_sy_m - d_ss - d_yy_m)
            out["d_sy_modes"].append(d_sy_m)
            out["d_yy_modes"].append(d_yy_m)
        else:
            for k in ("ged_modes", "d_sy_modes", "d_yy_modes"):
                out[k].append(nan)
        out["matched_iou"].append(hungarian_matched_iou(samples[:, :s], graders, classes).double())
        out["presence_count"].append(lesion_presence_counts(samples[:, :s]).double())
    return {k: torch.stack(v, dim=1).cpu() for k, v in out.items()}
