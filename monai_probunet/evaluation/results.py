"""Evaluation results: the per-image values of a model on a split, their summary, paired comparison and files."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io_utils import atomic_write_json, atomic_write_text
from ..metrics import PresenceThreshold, bootstrap_ci, wilcoxon_signed_rank
from ..model_loading import PRESENCE_THRESHOLD_NAME
from .scoring import ESTIMATOR, METRICS

__all__ = [
    "EVALUATION_FILES",
    "PER_IMAGE_CSV",
    "SUMMARY_JSON",
    "EvaluationResult",
    "compare",
    "is_evaluation_folder",
    "save_presence_threshold",
    "write_per_image_csv",
    "write_summary_json",
]

PER_IMAGE_CSV = "per_image.csv"
SUMMARY_JSON = "summary.json"
#: the names of the files an evaluation folder holds: the evaluation's, and those ``monai_probunet.calibration``
#: writes beside them (``scenes32_evaluate.yaml``)
EVALUATION_FILES = (
    PER_IMAGE_CSV, SUMMARY_JSON, PRESENCE_THRESHOLD_NAME, "ged_vs_samples.png", "presence_histogram_*.png",
    "samples.png", "latent_grid.png", "calibration.json", "mode_calibration.png", "pixel_marginals.png",
    "calibration_samples.png",
)


def is_evaluation_folder(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier evaluation and nothing else: its ``summary.json`` is one (it has the
    evaluation's keys) and every other entry is a file named as :data:`EVALUATION_FILES`."""
    try:
        summary = json.loads((folder / SUMMARY_JSON).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(summary, dict) or not {"estimator", "models", "split"} <= set(summary):
        return False
    return all(p.is_file() and any(fnmatch.fnmatchcase(p.name, n) for n in EVALUATION_FILES) for p in folder.iterdir())


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


def save_presence_threshold(threshold: PresenceThreshold, path: str | Path, **extra: Any) -> Path:
    """Write ``threshold.to_dict()`` plus ``extra`` keys (e.g. ``test_accuracy``, ``model``) as JSON, atomically
    (a temporary file in the same folder + ``os.replace``: readers never see a half-written rule)."""
    data = {**threshold.to_dict(), "validation_accuracy": threshold.accuracy, **extra}
    return atomic_write_json(path, data)


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
