"""MLflow for ``compare.py --tracking``: one experiment holding every training and evaluation run and the table.

The bundle runs log themselves (``--tracking mlflow``, ``docs/training.md``; ``compare.tracking_options``); this
module opens the experiment before they start (:func:`open_experiment`, its artifacts where a bundle training would
put them) and adds the comparison's own run (:func:`log_comparison`), after it nesting the runs of a model trained as
several members (the ensemble) under one run of the model, its evaluations included, as an evaluation of any other
model is a child of its training run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from monai_probunet.bundle_utils import ConfigValueError, check_tracking_uri

__all__ = ["artifact_location", "log_comparison", "nest_member_runs", "open_experiment"]


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
        ``mlruns`` beside a SQLite database, as a ``file:`` URI; ``None`` for a server, which decides (MONAI's own
        rule, read from the handler itself).
    """
    from monai.handlers import MLFlowHandler

    return MLFlowHandler(tracking_uri=uri).artifact_location


#: the run names of a model's evaluations (``compare.py``: ``eval_<model>``, with ``--validation`` /
#: ``--heldout`` also ``eval_validation_<model>`` / ``eval_heldout_<model>``)
EVALUATION_PREFIXES = ("eval", "eval_validation", "eval_heldout")


def nest_member_runs(tracking: Mapping[str, str], models: Iterable[str]) -> dict[str, str]:
    """Nest the runs of each model trained as several members (its training runs ``<model>_member_<N>``: the
    ensemble) under one run ``<model>``: the member trainings and the model's evaluations (``eval_<model>`` ...)
    become its children, as an evaluation of a model of one training is a child of that training's run (the bundle
    links it through the run record beside the checkpoint, which a model of several trainings has not).

    The run ``<model>`` is created once (``FINISHED``, its member count as the param ``members``) and found again
    by a later call (``--resume``, ``--report``); a run that already has a parent is left where it is.

    Args:
        tracking: :func:`open_experiment`'s ``{"uri", "experiment", "experiment_id"}``.
        models: the compared models' names.

    Returns:
        ``{model: its run id}`` for each model trained as members.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking["uri"])
    by_name: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs([tracking["experiment_id"]], max_results=1000, page_token=token)
        for run in page:
            by_name.setdefault(run.info.run_name, []).append(run)
        token = page.token
        if not token:
            break
    nested = {}
    for model in models:
        member = re.compile(re.escape(model) + r"_member_\d+")
        members = [r for name, found in by_name.items() if member.fullmatch(name) for r in found]
        if not members:
            continue
        if model in by_name:
            run_id = by_name[model][0].info.run_id
        else:
            run_id = client.create_run(tracking["experiment_id"], run_name=model).info.run_id
            client.log_param(run_id, "members", len({r.info.run_name for r in members}))
            client.set_terminated(run_id)
        evaluations = [r for prefix in EVALUATION_PREFIXES for r in by_name.get(f"{prefix}_{model}", [])]
        for run in members + evaluations:
            if "mlflow.parentRunId" not in run.data.tags:
                client.set_tag(run.info.run_id, "mlflow.parentRunId", run_id)
        nested[model] = run_id
    return nested


def log_comparison(
    tracking: Mapping[str, str], out: Path, summaries: Mapping[str, dict], timings: Mapping[str, float],
    params: Mapping[str, Any],
) -> str:
    """A run ``comparison`` in the experiment: ``out``'s table, figures and timings as artifacts, every model's test
    GED by S (``test_ged_<model>``, step S) and its minutes (``minutes_<model>``) as metrics, ``params`` as params;
    first the runs of a model trained as members are nested under one run of it (:func:`nest_member_runs`).

    Returns:
        the run's id.
    """
    import mlflow

    nest_member_runs(tracking, summaries)
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
