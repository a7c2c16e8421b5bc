"""An evaluation's MLflow run (``run evaluating ... --tracking mlflow``): :func:`log_evaluation`.

The evaluation's ``summary.json`` goes into a run of its own in the training's store and experiment, a child of the
training run recorded next to the checkpoint (``mlflow_run.json``, :mod:`~monai_probunet.handlers.tracking`), where
there is one: its metrics at every sample count S, the reference rows, the summary and the executed config.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .tracking import (
    RUN_RECORD,
    _experiment,
    _log_executed_config,
    _mlflow_handlers,
    _read_record,
    _recorded_run,
    flatten_params,
)

__all__ = ["log_evaluation"]

logger = logging.getLogger(__name__)


def _summary_metrics(summary: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of an evaluation summary: every metric's mean per model with the sample count S as
    the step (``<split>_<metric>``, the oracle's ``oracle_<split>_<metric>``), the references' GED
    (``<split>_ged_<reference>``, e.g. ``test_ged_majority_vote_ge_2``) and the lesion-presence test accuracy."""
    split = summary.get("split", "test")
    out: list[tuple[str, float, int]] = []
    models = summary.get("models", {})
    for name, s in models.items():
        prefix = f"oracle_{split}" if name == "oracle" and len(models) > 1 else split
        for metric, entries in s.get("metrics", {}).items():
            out += [(f"{prefix}_{metric}", float(e["mean"]), int(e["S"])) for e in entries if e.get("mean") is not None]
        accuracy = s.get("presence", {}).get("test_accuracy")
        if accuracy is not None:
            out.append((f"{prefix}_presence_accuracy", float(accuracy), 0))
    for key, r in summary.get("references", {}).items():
        if r.get("ged") is not None:
            name = re.sub(r"[^\w\-. :/]+", "_", str(key).replace(">=", "_ge_"))  # characters MLflow allows
            out.append((f"{split}_ged_{name}", float(r["ged"]), 0))
    return out


def log_evaluation(
    summary: Mapping[str, Any],
    handlers: Sequence[Any] | None,
    output_dir: str | os.PathLike,
    ckpt_path: str | os.PathLike | None = None,
    params: Mapping[str, Any] | None = None,
) -> Mapping[str, Any]:
    """Log an evaluation (:func:`~monai_probunet.evaluation.run_evaluation`'s summary) into an MLflow run.

    With ``--tracking mlflow``, MONAI appends its evaluation :class:`MLFlowHandler` to ``handlers``; its store,
    experiment and ``--run_name`` are used (default name ``eval_<date>_<time>``). The run gets ``params``, the
    summary's metrics (:func:`_summary_metrics`: ``test_ged`` etc. at steps S = 1, 4, 8, 16), ``summary.json`` and
    the executed config as artifacts, and is a child of the training run recorded next to ``ckpt_path``
    (``mlflow_run.json``) when that run is in the same experiment. Without an ``MLFlowHandler`` it does nothing.

    Returns:
        ``summary``, unchanged.
    """
    import mlflow.entities

    tracking = _mlflow_handlers(handlers)
    if not tracking:
        return summary
    h = tracking[0]
    experiment = _experiment(h)
    tags = {}
    if ckpt_path is not None:
        record = Path(ckpt_path).parent / RUN_RECORD
        parent = _recorded_run(h, record, experiment.experiment_id)
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.info.run_id
        else:
            trained_in = (_read_record(record) or {}).get("tracking_uri")
            if trained_in and trained_in != h.client.tracking_uri:
                logger.warning(
                    f"MLflow: the training of {ckpt_path} was tracked in {trained_in}; this evaluation goes into "
                    f"{h.client.tracking_uri}, not linked to it: add --tracking_uri {trained_in} to log it there."
                )
    name = h.run_name if h.run_name is not None else f"eval_{time.strftime('%Y%m%d_%H%M%S')}"
    run = h.client.create_run(experiment.experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        given = {k: v for k, v in dict(params or {}).items() if v is not None}  # e.g. no --model_name
        flat = [mlflow.entities.Param(k, str(v)) for k, v in flatten_params(given).items()]
        metrics = [mlflow.entities.Metric(k, v, now, step) for k, v, step in _summary_metrics(summary)]
        for i in range(0, max(len(metrics), 1), 1000):  # MLflow takes at most 1000 metrics per batch
            h.client.log_batch(run_id, metrics=metrics[i : i + 1000], params=flat if i == 0 else [])
        summary_file = Path(output_dir) / "summary.json"
        if summary_file.is_file():
            h.client.log_artifact(run_id, str(summary_file))
        _log_executed_config(tracking, run_id)
    except BaseException:
        h.client.set_terminated(run_id, "FAILED")
        raise
    h.client.set_terminated(run_id, "FINISHED")
    logger.info(f"MLflow: evaluation logged into run {name} ({run_id}) of experiment {experiment.name}.")
    return summary
