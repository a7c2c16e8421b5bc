"""MLflow for ``compare.py --tracking``: one experiment holding every training and evaluation run and the table.

The bundle runs log themselves (``--tracking mlflow``, ``docs/training.md``; ``compare.tracking_options``); this
module opens the experiment before they start (:func:`open_experiment`, its artifacts where a bundle training would
put them) and adds the comparison's own run (:func:`log_comparison`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_probunet.bundle_utils import ConfigValueError, check_tracking_uri

__all__ = ["artifact_location", "log_comparison", "open_experiment"]


def open_experiment(uri: str | None, name: str, repo: Path) -> dict[str, str]:
    """Check the store and create the experiment ``name`` before the runs that log into it (two trainings at a time
    must not both create it).

    Args:
        uri: ``--tracking-uri`` (``None``: the bundle's default, ``<repo>/bundle/eval/mlruns.db``;
            ``MLFLOW_TRACKING_URI`` overrides either, as for the bundle).
        name: the experiment.
        repo: the repository root.

    Returns:
        ``{"uri", "experiment", "experiment_id"}``.

    Raises:
        ConfigValueError: a store MLflow keeps no runs in, a server that does not answer, a deleted experiment.
    """
    import mlflow
    from monai.utils import path_to_sqlite_uri

    uri = check_tracking_uri(uri, "--tracking-uri") or path_to_sqlite_uri(str(repo / "bundle" / "eval" / "mlruns.db"))
    if uri.startswith("sqlite:"):
        Path(uri.split(":///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage != "active":
        reason = "give another name (or restore it: mlflow experiments restore)"
        raise ConfigValueError(f"--experiment-name {name}: the experiment is deleted in {uri}; {reason}.")
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = client.create_experiment(name, artifact_location=artifact_location(uri))
    return {"uri": uri, "experiment": name, "experiment_id": experiment_id}


def artifact_location(uri: str) -> str | None:
    """Where a bundle training's ``MLFlowHandler`` puts the artifacts of an experiment it creates in the store ``uri``.

    Args:
        uri: the tracking URI.

    Returns:
        ``mlruns`` beside a SQLite database, as a ``file:`` URI (a relative database path is taken from the working
        folder, as MLflow takes the database); ``None`` for a server, which decides.
    """
    from monai.utils import path_to_uri

    if uri.startswith("sqlite:///"):
        return path_to_uri(Path(uri[len("sqlite:///"):]).parent / "mlruns")
    return None


def log_comparison(
    tracking: Mapping[str, str], out: Path, summaries: Mapping[str, dict], timings: Mapping[str, float],
    params: Mapping[str, Any],
) -> str:
    """A run ``comparison`` in the experiment: ``out``'s table, figures and timings as artifacts, every model's test
    GED by S (``test_ged_<model>``, step S) and its minutes (``minutes_<model>``) as metrics, ``params`` as params.

    Returns:
        the run's id.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking["uri"])
    run_id = client.create_run(tracking["experiment_id"], run_name="comparison").info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    for name, summary in summaries.items():
        for entry in summary["models"][name]["metrics"].get("ged", []):
            client.log_metric(run_id, f"test_ged_{name}", float(entry["mean"]), step=int(entry["S"]))
        if timings.get(name):
            client.log_metric(run_id, f"minutes_{name}", timings[name] / 60)
    for name in ("results.md", "ged_vs_samples.png", "mode_calibration.png", "timings.json"):
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name))
    client.set_terminated(run_id)
    print(f"MLflow: experiment {tracking['experiment']} in {tracking['uri']} (run comparison {run_id}); "
          f"mlflow ui --backend-store-uri {tracking['uri']}", flush=True)
    return run_id
