"""Evaluation: GED / matched IoU / diversity / lesion presence at several sample counts, per image.

- :mod:`.scoring`: what is measured (:data:`METRICS`, :func:`score_samples`), one distance matrix per image for all S;
- :mod:`.evaluator`: :func:`evaluate` / :func:`evaluate_model` (models and the oracle on a split),
  :func:`presence_counts` and :func:`fit_presence` (the Appendix E rule);
- :mod:`.results`: :class:`EvaluationResult` (per-image values, bootstrap summary), :func:`compare` (Wilcoxon on
  per-image values), the CSV / JSON writers;
- :mod:`.workflow`: :func:`run_evaluation`, what ``bundle/configs/evaluate.yaml`` calls (CSV + JSON + PNGs).

Images are loaded and sampled by :mod:`monai_probunet.sampling`, shared with the calibration workflow.
"""

from ..io_utils import load_network_weights
from ..metrics.presence import load_presence_threshold
from ..model_loading import PRESENCE_THRESHOLD_NAME, load_trained_network
from ..sampling import ORACLE, OracleSampler, image_seed
from .evaluator import evaluate, evaluate_model, fit_presence, presence_counts
from .results import (
    PER_IMAGE_CSV,
    SUMMARY_JSON,
    EvaluationResult,
    compare,
    save_presence_threshold,
    write_per_image_csv,
    write_summary_json,
)
from .scoring import ESTIMATOR, METRICS, score_samples
from .workflow import default_model_name, run_evaluation

__all__ = [
    "ESTIMATOR",
    "METRICS",
    "ORACLE",
    "PER_IMAGE_CSV",
    "PRESENCE_THRESHOLD_NAME",
    "SUMMARY_JSON",
    "EvaluationResult",
    "OracleSampler",
    "compare",
    "default_model_name",
    "evaluate",
    "evaluate_model",
    "fit_presence",
    "image_seed",
    "load_network_weights",
    "load_presence_threshold",
    "load_trained_network",
    "presence_counts",
    "run_evaluation",
    "save_presence_threshold",
    "score_samples",
    "write_per_image_csv",
    "write_summary_json",
]
