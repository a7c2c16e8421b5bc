"""Evaluation workflow: GED / matched IoU / diversity / lesion presence at several sample counts, per image.

For every test image a model draws ``max(sample_counts)`` hypotheses once (seeded) and the first S of them are
scored for each S, so the curves over S are nested (the S = 4 set is contained in the S = 8 set) and one forward
pass serves all S. The *oracle* (draws from the true distribution: the known modes with ``mode_probs`` where the
datalist has them, else uniformly from the grader masks) is a pseudo-model scored by the same code.

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
Appendix E is fitted on the validation split (:func:`fit_presence_threshold`) from the counts at
``presence_samples`` (16 in the paper) and its accuracy reported on the test split.

Entry points: :func:`evaluate` / :func:`evaluate_model` (library), :func:`compare` (Wilcoxon on per-image values),
:func:`run_evaluation` (what ``bundle/configs/evaluate.yaml`` calls; writes CSV + JSON + PNGs).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .data.disk_format import load_datalist
from .engines.precision import autocast_context
from .io_utils import atomic_write_json, atomic_write_text, load_network_weights
from .metrics import (
    PresenceThreshold,
    bootstrap_ci,
    fit_presence_threshold,
    hungarian_matched_iou,
    lesion_presence_counts,
    pairwise_iou_distance,
    presence_ambiguity,
    sample_modes,
    wilcoxon_signed_rank,
)
from .metrics.calibration import mask_ignored
from .metrics.oracle import ORACLE
from .metrics.presence import load_presence_threshold
from .model_loading import load_trained_network
from .networks.utils import hypotheses_to_labels

__all__ = [
    "ESTIMATOR",
    "METRICS",
    "ORACLE",
    "EvaluationResult",
    "OracleSampler",
    "compare",
    "default_model_name",
    "evaluate",
    "evaluate_model",
    "fit_presence",
    "load_network_weights",
    "load_presence_threshold",
    "load_trained_network",
    "presence_counts",
    "run_evaluation",
    "save_presence_threshold",
    "write_per_image_csv",
    "write_summary_json",
]

logger = logging.getLogger(__name__)

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
PRESENCE_THRESHOLD_NAME = "presence_threshold.json"
PER_IMAGE_CSV = "per_image.csv"
SUMMARY_JSON = "summary.json"


# --------------------------------------------------------------------------------------------- samplers


class OracleSampler:
    """Pseudo-model drawing from the true ground-truth distribution of each image.

    Draws i.i.d. from the known modes with ``mode_probs`` where the datalist has them, else uniformly from the
    image's grader masks. Image ``k`` of a split uses its own generator seeded with ``(seed, k)``, so the draws do
    not depend on batching.
    """

    name = ORACLE

    def sample_labels(
        self, graders: torch.Tensor, modes: list[torch.Tensor | None], probs: list[torch.Tensor | None],
        indices: Sequence[int], num_samples: int, seed: int,
    ) -> torch.Tensor:
        """``B x S x *spatial`` label maps.

        Args:
            graders: ``B x A x *spatial`` grader masks.
            modes: per image ``M x *spatial`` modes, or ``None`` (unknown distribution).
            probs: per image ``M`` mode probabilities, or ``None``.
            indices: per image its index in the split (seeds its generator).
            num_samples: S.
            seed: evaluation seed.
        """
        out = []
        for b, k in enumerate(indices):
            gen = torch.Generator().manual_seed(image_seed(seed, k))
            if modes[b] is not None:
                draws = sample_modes(modes[b].cpu(), probs[b].cpu(), num_samples, gen)
            else:
                a = graders.shape[1]
                draws = sample_modes(graders[b].cpu(), torch.full((a,), 1.0 / a, dtype=torch.float64), num_samples, gen)
            out.append(draws)
        return torch.stack(out).to(graders.device)


def image_seed(seed: int, index: int) -> int:
    """The sampling seed of the ``index``-th image of a run seeded with ``seed`` (independent of batching)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


Sampler = nn.Module | OracleSampler


def _model_labels(
    model: nn.Module, images: torch.Tensor, num_samples: int, generator: torch.Generator, precision: str
) -> torch.Tensor:
    """``B x S x *spatial`` arg-max labels of ``model.sample(images, S, generator=generator)``."""
    if not hasattr(model, "sample"):
        raise TypeError(f"{type(model).__name__} has no sample(image, num_samples, generator) method.")
    with torch.no_grad(), autocast_context(precision, images.device):
        logits = model.sample(images, num_samples, generator=generator)
    return hypotheses_to_labels(logits)


# --------------------------------------------------------------------------------------------- data


@dataclass
class _Case:
    index: int
    case_id: str
    image: torch.Tensor  # C x *spatial
    graders: torch.Tensor  # A x *spatial, int64
    modes: torch.Tensor | None  # M x *spatial, int64
    probs: torch.Tensor | None  # M float64


def _prepare_items(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Datalist entries -> transform inputs; graders and modes ride together in ``label`` (split after loading)."""
    out = []
    for k, item in enumerate(items):
        case = item.get("case_id", f"#{k}")
        for key in ("image", "label"):
            if key not in item:
                raise ValueError(f"datalist entry {case} (index {k}) has no {key!r} key.")
        labels = list(item["label"]) if isinstance(item["label"], (list, tuple)) else [item["label"]]
        modes, probs = item.get("modes"), item.get("mode_probs")
        if (modes is None) != (probs is None):
            raise ValueError(f"datalist entry {case}: 'modes' and 'mode_probs' must be given together.")
        if modes is not None:
            modes = list(modes) if isinstance(modes, (list, tuple)) else [modes]
            if len(modes) != len(probs) or not modes:
                raise ValueError(
                    f"datalist entry {case}: 'modes' ({len(modes)} files) and 'mode_probs' ({len(probs)} values) "
                    "must be non-empty and of equal length."
                )
        out.append(
            {
                "data": {"image": item["image"], "label": labels + (modes or [])},
                "index": k,
                "case_id": str(item.get("case_id", k)),
                "num_graders": len(labels),
                "probs": None if probs is None else [float(p) for p in probs],
            }
        )
    return out


class _TransformDataset(torch.utils.data.Dataset):
    def __init__(self, prepared: list[dict[str, Any]], transform: Callable) -> None:
        self.prepared, self.transform = prepared, transform

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, i: int) -> _Case:
        p = self.prepared[i]
        d = self.transform(dict(p["data"]))
        image, label = torch.as_tensor(d["image"]), torch.as_tensor(d["label"])
        a = p["num_graders"]
        if label.shape[0] != len(p["data"]["label"]):
            raise ValueError(
                f"case {p['case_id']}: the transform gave {label.shape[0]} label channels for "
                f"{len(p['data']['label'])} files (graders + modes); it must load each file as one channel."
            )
        label = label.round().long()
        probs = None if p["probs"] is None else torch.tensor(p["probs"], dtype=torch.float64)
        modes = label[a:] if probs is not None else None
        return _Case(p["index"], p["case_id"], image.float(), label[:a], modes, probs)


def _as_list(batch: list) -> list:
    return batch


def _groups(
    items: Sequence[Mapping[str, Any]], transform: Callable, batch_size: int, num_workers: int
) -> Iterator[list[_Case]]:
    """Batches of cases that share image shape and grader count (so they stack), in datalist order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    loader = DataLoader(
        _TransformDataset(_prepare_items(items), transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_as_list,
    )
    for batch in loader:
        groups: dict[tuple, list[_Case]] = {}
        for case in batch:
            groups.setdefault((tuple(case.image.shape), tuple(case.graders.shape)), []).append(case)
        yield from groups.values()


# --------------------------------------------------------------------------------------------- scoring


def _score(
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


# --------------------------------------------------------------------------------------------- results


@dataclass
class EvaluationResult:
    """Per-image evaluation of one model (or the oracle) on one split.

    Attributes:
        name: model name (``"oracle"`` for the oracle).
        split: datalist split evaluated.
        sample_counts: the S values, ascending.
        case_ids: ``N`` case ids, datalist order.
        values: ``{metric: N x K float64}`` for :data:`METRICS` (K = ``len(sample_counts)``; NaN where a metric
            is undefined, e.g. ``ged_modes`` without known modes).
        ambiguous: ``N`` bool, graders disagree on lesion presence.
        presence_samples: the S at which :attr:`presence_counts` were taken (16 in the paper).
        presence_counts: ``N`` int, samples (of the first ``presence_samples``) with a lesion.
        num_graders, num_modes: ``N`` int (``num_modes = 0``: distribution unknown).
        seed, classes: as evaluated.
        examples: the first few images' ``image`` (``C x *spatial``), ``graders`` and ``samples`` (up to 16), for
            figures; not written anywhere.
    """

    name: str
    split: str
    sample_counts: tuple[int, ...]
    case_ids: list[str]
    values: dict[str, np.ndarray]
    ambiguous: np.ndarray
    presence_samples: int
    presence_counts: np.ndarray
    num_graders: np.ndarray
    num_modes: np.ndarray
    seed: int
    classes: tuple[int, ...]
    examples: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)

    @property
    def num_images(self) -> int:
        return len(self.case_ids)

    def metric(self, metric: str = "ged", num_samples: int | None = None) -> np.ndarray:
        """``N`` per-image values of ``metric`` at S = ``num_samples`` (default: the largest S)."""
        if metric not in self.values:
            raise ValueError(f"unknown metric {metric!r}; expected one of {sorted(self.values)}.")
        s = max(self.sample_counts) if num_samples is None else int(num_samples)
        if s not in self.sample_counts:
            raise ValueError(f"S = {s} was not evaluated; sample_counts are {list(self.sample_counts)}.")
        return self.values[metric][:, self.sample_counts.index(s)]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per image x S: ``model, split, case_id, index, S, <METRICS>, ambiguous, num_graders, num_modes``."""
        rows = []
        for i, case in enumerate(self.case_ids):
            for k, s in enumerate(self.sample_counts):
                row: dict[str, Any] = {"model": self.name, "split": self.split, "case_id": case, "index": i, "S": s}
                for metric in METRICS:
                    v = float(self.values[metric][i, k])
                    row[metric] = int(v) if metric == "presence_count" else v
                row.update(
                    ambiguous=int(self.ambiguous[i]), num_graders=int(self.num_graders[i]),
                    num_modes=int(self.num_modes[i]),
                )
                rows.append(row)
        return rows

    def summary(self, num_resamples: int = 10000, confidence: float = 0.95) -> dict[str, Any]:
        """Mean and percentile-bootstrap interval (over images) of every metric at every S.

        Returns:
            ``{"model", "split", "estimator", "sample_counts", "num_images", "seed", "classes", "confidence",
            "bootstrap_resamples", "metrics": {metric: [{"S", "mean", "ci_low", "ci_high", "n"}, ...]},
            "presence": {"num_samples", "num_ambiguous", "mean_count"}}``; NaN values (e.g. ``ged_modes`` without
            modes) are left out, a metric defined for no image has ``mean = ci_low = ci_high = None, n = 0``.
        """
        metrics: dict[str, list[dict[str, Any]]] = {}
        for metric in METRICS:
            entries = []
            for k, s in enumerate(self.sample_counts):
                v = self.values[metric][:, k]
                v = v[np.isfinite(v)]
                if v.size:
                    mean, lo, hi = bootstrap_ci(v, num_resamples=num_resamples, confidence=confidence, seed=self.seed)
                else:
                    mean = lo = hi = None
                entries.append({"S": s, "mean": mean, "ci_low": lo, "ci_high": hi, "n": int(v.size)})
            metrics[metric] = entries
        return {
            "model": self.name,
            "split": self.split,
            "estimator": ESTIMATOR,
            "sample_counts": list(self.sample_counts),
            "num_images": self.num_images,
            "seed": self.seed,
            "classes": list(self.classes),
            "confidence": confidence,
            "bootstrap_resamples": num_resamples,
            "metrics": metrics,
            "presence": {
                "num_samples": self.presence_samples,
                "num_ambiguous": int(self.ambiguous.sum()),
                "mean_count": float(self.presence_counts.mean()) if self.num_images else None,
            },
        }


def compare(
    result_a: EvaluationResult, result_b: EvaluationResult, metric: str = "ged", S: int = 16
) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``metric`` at S between two models on the same images.

    Images where either value is NaN are dropped (e.g. ``ged_modes`` without modes).

    Returns:
        :func:`~monai_probunet.metrics.wilcoxon_signed_rank`'s dict plus ``a``, ``b`` (names), ``metric``, ``S``,
        ``mean_a``, ``mean_b``.
    """
    if result_a.case_ids != result_b.case_ids:
        raise ValueError(
            f"{result_a.name!r} and {result_b.name!r} were not evaluated on the same images (case_ids differ)."
        )
    x, y = result_a.metric(metric, S), result_b.metric(metric, S)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        raise ValueError(f"{metric!r} at S = {S} is undefined (NaN) for every image; nothing to compare.")
    out = wilcoxon_signed_rank(x[keep], y[keep])
    return {
        "a": result_a.name, "b": result_b.name, "metric": metric, "S": int(S),
        "mean_a": float(x[keep].mean()), "mean_b": float(y[keep].mean()), **out,
    }


# --------------------------------------------------------------------------------------------- evaluation


def _check_sample_counts(sample_counts: Sequence[int], max_samples: int | None) -> tuple[tuple[int, ...], int]:
    counts = sorted({int(s) for s in sample_counts})
    if not counts or counts[0] < 1 or any(float(s) != int(s) for s in sample_counts):
        raise ValueError(f"sample_counts must be positive integers, got {list(sample_counts)}.")
    smax = counts[-1] if max_samples is None else int(max_samples)
    if smax < counts[-1]:
        raise ValueError(f"max_samples ({smax}) must be >= the largest sample count ({counts[-1]}).")
    return tuple(counts), smax


def _resolve_classes(classes: Sequence[int] | None, num_classes: int) -> tuple[int, ...]:
    if classes is None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}.")
        return tuple(range(1, num_classes))
    if not len(classes):
        raise ValueError("classes must name at least one class.")
    return tuple(int(c) for c in classes)


def _stack_group(group: list[_Case], device: torch.device) -> dict[str, Any]:
    images = torch.stack([c.image for c in group]).to(device)
    graders = torch.stack([c.graders for c in group]).to(device)
    m = max((0 if c.modes is None else c.modes.shape[0]) for c in group)
    modes = torch.zeros((len(group), m, *graders.shape[2:]), dtype=torch.long, device=device)
    weights = torch.zeros((len(group), m), dtype=torch.float64, device=device)
    for b, c in enumerate(group):
        if c.modes is not None:
            if c.modes.shape[1:] != graders.shape[2:]:
                raise ValueError(f"case {c.case_id}: modes {tuple(c.modes.shape)} and graders differ in shape.")
            modes[b, : c.modes.shape[0]] = c.modes.to(device)
            weights[b, : c.modes.shape[0]] = c.probs.to(device)
    has_modes = torch.tensor([c.modes is not None for c in group], device=device)
    return {"images": images, "graders": graders, "modes": modes, "weights": weights, "has_modes": has_modes}


def evaluate(
    models: Mapping[str, Sampler],
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    sample_counts: Sequence[int] = (1, 4, 8, 16),
    max_samples: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    num_classes: int = 2,
    classes: Sequence[int] | None = None,
    oracle: bool = True,
    precision: str = "fp32",
    presence_samples: int | None = None,
    split: str = "test",
    keep_examples: int = 0,
    ignore_index: int | None = None,
) -> dict[str, EvaluationResult]:
    """Evaluate several models (and the oracle) on the same images; each image is loaded once.

    Args:
        models: ``{name: model}``; a model has ``sample(image, num_samples, generator=...)`` returning logits
            ``B x S x C x *spatial`` (ProbUNet, baselines), or is an :class:`OracleSampler`.
        items: datalist entries (``load_datalist`` output): ``"image"``, ``"label"`` (A grader files), optional
            ``"modes"`` + ``"mode_probs"`` (the true distribution), ``"case_id"``.
        transform: deterministic dict transform giving ``image`` ``C x *spatial`` and ``label`` one channel per file
            (the bundle's ``load_transforms``); grader and mode files go through it together as ``label``.
        sample_counts: the S values scored (nested: the first S of ``max_samples`` draws).
        max_samples: draws per image (default ``max(sample_counts)``).
        seed: each model's sampling generator is seeded with it once (same seed, data order and ``batch_size``:
            same samples); the oracle seeds per image.
        device: where sampling and distances run.
        batch_size: images per forward pass.
        num_workers: data-loading workers.
        num_classes: C; the IoU is averaged over classes ``1 .. C-1`` unless ``classes`` is given.
        classes: classes whose IoU is averaged (``(1,)`` for binary lesion masks).
        oracle: also score the oracle, under the name ``"oracle"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` autocast for sampling.
        presence_samples: S of the lesion-presence counts (default ``min(16, max_samples)``).
        split: recorded in the results.
        keep_examples: keep the first this many images' tensors (up to 16 samples) for figures.
        ignore_index: label of unannotated regions (Cityscapes 255): sampled pixels where the graders have it are
            set to it as well, so predictions there count for nothing (paper Appendix H.2). ``None``: no masking.

    Returns:
        ``{name: EvaluationResult}`` (the oracle last).
    """
    counts, smax = _check_sample_counts(sample_counts, max_samples)
    cls = _resolve_classes(classes, num_classes)
    p_s = min(16, smax) if presence_samples is None else int(presence_samples)
    if not 1 <= p_s <= smax:
        raise ValueError(f"presence_samples must be in [1, max_samples = {smax}], got {p_s}.")
    device = torch.device(device)
    samplers: dict[str, Sampler] = dict(models)
    if oracle:
        if ORACLE in samplers:
            raise ValueError(f"a model is already named {ORACLE!r}; pass oracle=False or rename it.")
        samplers[ORACLE] = OracleSampler()
    if not samplers:
        raise ValueError("nothing to evaluate: pass at least one model or oracle=True.")
    generators: dict[str, torch.Generator] = {}
    for name, model in samplers.items():
        if isinstance(model, nn.Module):
            model.eval()
            generators[name] = torch.Generator(device=device).manual_seed(int(seed))
    acc: dict[str, dict[str, list]] = {n: {"idx": [], "values": [], "presence": [], "examples": []} for n in samplers}
    meta: dict[int, tuple[str, bool, int, int]] = {}
    for group in _groups(items, transform, batch_size, num_workers):
        t = _stack_group(group, device)
        amb = presence_ambiguity(t["graders"]).cpu()
        for b, c in enumerate(group):
            meta[c.index] = (c.case_id, bool(amb[b]), c.graders.shape[0], 0 if c.modes is None else c.modes.shape[0])
        for name, model in samplers.items():
            if isinstance(model, OracleSampler):
                samples = model.sample_labels(
                    t["graders"], [c.modes for c in group], [c.probs for c in group], [c.index for c in group],
                    smax, seed,
                )
            else:
                samples = _model_labels(model, t["images"], smax, generators[name], precision)
                if ignore_index is not None:
                    samples = mask_ignored(samples, t["graders"], ignore_index)
            scores = _score(samples, t["graders"], t["modes"], t["weights"], t["has_modes"], counts, cls)
            a = acc[name]
            a["idx"] += [c.index for c in group]
            a["values"].append(scores)
            a["presence"].append(lesion_presence_counts(samples[:, :p_s]).cpu())
            for b, c in enumerate(group):
                if c.index < keep_examples:
                    a["examples"].append(
                        {"index": c.index, "case_id": c.case_id, "image": c.image, "graders": c.graders,
                         "samples": samples[b, :16].cpu()}
                    )
    if not meta:
        raise ValueError("items is empty: nothing to evaluate.")
    order_ids = sorted(meta)
    results = {}
    for name, a in acc.items():
        order = np.argsort(np.asarray(a["idx"]), kind="stable")
        values = {k: torch.cat([v[k] for v in a["values"]]).numpy()[order] for k in METRICS}
        results[name] = EvaluationResult(
            name=name,
            split=split,
            sample_counts=counts,
            case_ids=[meta[i][0] for i in order_ids],
            values=values,
            ambiguous=np.array([meta[i][1] for i in order_ids], dtype=bool),
            presence_samples=p_s,
            presence_counts=torch.cat(a["presence"]).numpy()[order].astype(np.int64),
            num_graders=np.array([meta[i][2] for i in order_ids], dtype=np.int64),
            num_modes=np.array([meta[i][3] for i in order_ids], dtype=np.int64),
            seed=int(seed),
            classes=cls,
            examples=sorted(a["examples"], key=lambda e: e["index"]),
        )
    return results


def evaluate_model(
    model: Sampler | str,
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    name: str | None = None,
    **kwargs: Any,
) -> EvaluationResult:
    """Evaluate one model (or the oracle: ``model="oracle"``); see :func:`evaluate` for the arguments."""
    if isinstance(model, str):
        if model != ORACLE:
            raise ValueError(f"a model given by name must be {ORACLE!r}, got {model!r}.")
        model = OracleSampler()
    name = name or (ORACLE if isinstance(model, OracleSampler) else type(model).__name__)
    kwargs["oracle"] = False
    return evaluate({name: model}, items, transform, **kwargs)[name]


def presence_counts(
    model: Sampler,
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    num_samples: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion-presence counts of ``num_samples`` draws and grader ambiguity, per image (no other metric).

    Returns:
        ``(counts N int64 in [0, num_samples], ambiguous N bool)``, datalist order.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    if isinstance(model, nn.Module):
        model.eval()
    idx, counts, amb = [], [], []
    for group in _groups(items, transform, batch_size, num_workers):
        t = _stack_group(group, device)
        if isinstance(model, OracleSampler):
            samples = model.sample_labels(
                t["graders"], [c.modes for c in group], [c.probs for c in group], [c.index for c in group],
                num_samples, seed,
            )
        else:
            samples = _model_labels(model, t["images"], num_samples, gen, precision)
        idx += [c.index for c in group]
        counts.append(lesion_presence_counts(samples).cpu())
        amb.append(presence_ambiguity(t["graders"]).cpu())
    if not idx:
        raise ValueError("items is empty: no presence counts.")
    order = np.argsort(np.asarray(idx), kind="stable")
    return torch.cat(counts).numpy()[order].astype(np.int64), torch.cat(amb).numpy()[order].astype(bool)


def fit_presence(
    val_counts: np.ndarray, val_ambiguous: np.ndarray, result: EvaluationResult
) -> tuple[PresenceThreshold, float]:
    """Fit the Appendix E rule on validation counts and score it on ``result``'s test counts.

    Returns:
        ``(threshold, test_accuracy)``.
    """
    threshold = fit_presence_threshold(val_counts, val_ambiguous, result.presence_samples)
    return threshold, threshold.score(result.presence_counts, result.ambiguous)


def save_presence_threshold(threshold: PresenceThreshold, path: str | Path, **extra: Any) -> Path:
    """Write ``threshold.to_dict()`` plus ``extra`` keys (e.g. ``test_accuracy``, ``model``) as JSON, atomically
    (a temporary file in the same folder + ``os.replace``: readers never see a half-written rule)."""
    data = {**threshold.to_dict(), "validation_accuracy": threshold.accuracy, **extra}
    return atomic_write_json(path, data)


# --------------------------------------------------------------------------------------------- writers


def write_per_image_csv(results: Sequence[EvaluationResult] | Mapping[str, EvaluationResult], path: str | Path) -> Path:
    """One row per model x image x S; columns ``model, split, case_id, index, S, <METRICS>, ambiguous,
    num_graders, num_modes`` (NaN written as ``nan``); written atomically."""
    results = list(results.values()) if isinstance(results, Mapping) else list(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["model", "split", "case_id", "index", "S", *METRICS, "ambiguous", "num_graders", "num_modes"]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in results:
        writer.writerows(r.rows())
    return atomic_write_text(path, buf.getvalue())


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def write_summary_json(summary: Mapping[str, Any], path: str | Path) -> Path:
    """Write a summary dict as JSON (non-finite numbers as ``null``), atomically."""
    return atomic_write_json(path, _json_safe(dict(summary)))


# --------------------------------------------------------------------------------------------- bundle entry


def default_model_name(ckpt_dir: str | Path, ensemble_ckpts: Sequence[str] | None = None) -> str:
    """A short model name: ``unet_ensemble<K>`` for an ensemble, else the checkpoint folder's name
    (``mheads``, ``fixed_prior``, ...), ``probunet`` for the default ``models`` folder."""
    if ensemble_ckpts:
        return f"unet_ensemble{len(ensemble_ckpts)}"
    base = Path(ckpt_dir).name
    return "probunet" if base in ("", "models") else base


def run_evaluation(
    network: nn.Module,
    datalist: str | Path,
    transform: Callable[[dict], dict],
    output_dir: str | Path,
    ckpt_path: str | Path | None = None,
    ensemble_ckpts: Sequence[str | Path] | None = None,
    model_name: str | None = None,
    eval_split: str = "test",
    threshold_split: str | None = "validation",
    sample_counts: Sequence[int] = (1, 4, 8, 16),
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    num_classes: int = 2,
    classes: Sequence[int] | None = None,
    precision: str = "fp32",
    oracle: bool = True,
    num_plot_images: int = 4,
    bootstrap_resamples: int = 10000,
    confidence: float = 0.95,
    threshold_path: str | Path | None = None,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (or a U-Net ensemble) on a split and write CSV, JSON and PNGs into ``output_dir``.

    Loads ``ckpt_path`` into ``network`` (``weights_only=True``), or, with ``ensemble_ckpts``, one copy of
    ``network`` per member checkpoint (:class:`~monai_probunet.networks.UNetEnsemble`). Evaluates it and the oracle
    on ``eval_split`` (:func:`evaluate`), fits the lesion-presence rule on ``threshold_split`` and scores it on
    ``eval_split``, tests the model against the oracle (Wilcoxon, GED at every S).

    Writes into ``output_dir``: ``per_image.csv`` (:func:`write_per_image_csv`), ``summary.json``
    (``{"estimator", "sample_counts", "split", "models": {name: EvaluationResult.summary() + presence fit},
    "comparisons": [...], "presence_threshold_file"}``), ``ged_vs_samples.png``, ``presence_histogram_<name>.png``,
    ``samples.png`` (first ``num_plot_images`` test images, 16 samples; class colours when ``num_classes > 2``),
    ``latent_grid.png`` (ProbUNet with a 2-D latent only), and ``presence_threshold.json`` (the model's rule). The
    rule is also written to ``threshold_path`` when one is given (e.g. ``bundle/models/presence_threshold.json``,
    where the inference path looks next to the checkpoint); by default nothing outside ``output_dir`` is
    written, so a shipped threshold changes only when asked. The rule is deterministic (same counts and labels, in
    any order: same rule; ties broken as documented in :func:`~monai_probunet.metrics.fit_presence_threshold`).
    Every file a later step reads (CSV, JSON) is written atomically.

    The lesion-presence rule and its histograms are for binary masks (``num_classes == 2``); with more classes
    they are skipped. ``ignore_index`` masks sampled pixels in unannotated regions (see :func:`evaluate`).

    Returns:
        The summary dict written to ``summary.json``.
    """
    from .networks import ProbUNet
    from .visualize import ged_vs_samples, label_sample_grid, latent_grid, presence_histogram, sample_grid

    device = torch.device(device)
    output_dir = Path(output_dir)
    model = load_trained_network(network, ckpt_path, ensemble_ckpts).to(device).eval()
    name = model_name or default_model_name(Path(ckpt_path).parent if ckpt_path else "", ensemble_ckpts)
    common = dict(seed=seed, device=device, batch_size=batch_size, num_workers=num_workers, precision=precision)

    items = load_datalist(datalist, eval_split)
    logger.info("evaluating %s on %d %s images at S = %s ...", name, len(items), eval_split, list(sample_counts))
    results = evaluate(
        {name: model}, items, transform, sample_counts=sample_counts, num_classes=num_classes, classes=classes,
        oracle=oracle, split=eval_split, keep_examples=num_plot_images, ignore_index=ignore_index, **common,
    )
    summaries = {n: r.summary(bootstrap_resamples, confidence) for n, r in results.items()}

    thresholds: dict[str, PresenceThreshold] = {}
    binary = num_classes == 2
    if threshold_split and not binary:
        logger.info("lesion-presence rule skipped: it is defined for binary masks, num_classes is %d", num_classes)
    if threshold_split and binary:
        val_items = load_datalist(datalist, threshold_split)
        for n, r in results.items():
            sampler = OracleSampler() if n == ORACLE and oracle else model
            val_counts, val_amb = presence_counts(sampler, val_items, transform, r.presence_samples, **common)
            threshold, test_acc = fit_presence(val_counts, val_amb, r)
            thresholds[n] = threshold
            summaries[n]["presence"].update(
                threshold=threshold.to_dict(), fitted_on=threshold_split, num_fit_images=int(len(val_counts)),
                validation_accuracy=threshold.accuracy, test_accuracy=test_acc,
            )
    threshold_files = []
    if name in thresholds:
        t_acc = summaries[name]["presence"]["test_accuracy"]
        extra = dict(model=name, test_accuracy=t_acc, fitted_on=threshold_split, evaluated_on=eval_split)
        threshold_files.append(save_presence_threshold(thresholds[name], output_dir / PRESENCE_THRESHOLD_NAME, **extra))
        if threshold_path:
            threshold_files.append(save_presence_threshold(thresholds[name], threshold_path, **extra))
            logger.info("presence rule (%d < count < %d) also written to %s", thresholds[name].low,
                        thresholds[name].high, threshold_path)

    comparisons = []
    if oracle and name != ORACLE:
        for s in results[name].sample_counts:
            comparisons.append(compare(results[name], results[ORACLE], "ged", s))
    summary = {
        "estimator": ESTIMATOR,
        "sample_counts": list(results[name].sample_counts),
        "split": eval_split,
        "num_images": results[name].num_images,
        "checkpoint": [str(p) for p in ensemble_ckpts] if ensemble_ckpts else str(ckpt_path),
        "models": summaries,
        "comparisons": comparisons,
        "presence_threshold_files": [str(p) for p in threshold_files],
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    write_per_image_csv(results, output_dir / PER_IMAGE_CSV)
    write_summary_json(summary, output_dir / SUMMARY_JSON)

    ged_vs_samples(summaries, output_dir / "ged_vs_samples.png")
    for n, r in (results.items() if binary else ()):
        presence_histogram(
            r.presence_counts, r.ambiguous, thresholds.get(n), output_dir / f"presence_histogram_{n}.png",
            num_samples=r.presence_samples, title=n,
        )
    ex = results[name].examples
    if ex:
        images, graders = torch.stack([e["image"] for e in ex]), torch.stack([e["graders"] for e in ex])
        samples, titles = torch.stack([e["samples"] for e in ex]), [e["case_id"] for e in ex]
        if binary:
            sample_grid(images[:, 0], graders, samples, output_dir / "samples.png", titles=titles)
        else:  # class colours (Cityscapes palette), RGB images
            label_sample_grid(images, graders, samples, output_dir / "samples.png", titles=titles)
        if isinstance(model, ProbUNet) and model.latent_dim == 2:
            latent_grid(model, ex[0]["image"], output_dir / "latent_grid.png", graders=ex[0]["graders"])
    for n, s in summaries.items():
        ged = {e["S"]: e["mean"] for e in s["metrics"]["ged"]}
        logger.info("%s: GED^2 by S %s; presence test accuracy %s", n, ged, s["presence"].get("test_accuracy"))
    logger.info("evaluation written to %s", os.fspath(output_dir))
    return summary
