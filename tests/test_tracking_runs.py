"""`--tracking mlflow` across interruptions, resumes, refusals and evaluations: one MLflow run per training (a
resumed training continues its own, marked KILLED while interrupted), no executed-config file left in the output
folders, the data a run used in its params, an unreachable server refused up front, an evaluation's summary metrics
in a run of its own. Read back with MlflowClient from a real SQLite store in tmp_path."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from monai.utils import path_to_sqlite_uri

from .conftest import REPO, TRAIN_YAML, run_bundle
from .test_reliability_training import _interrupt_with_ctrl_c

TINY = (
    "--dataset_kwargs", "{'num_patients': 12, 'image_size': 32}", "--channels", "[8, 16, 32]",
    "--val_interval", "1", "--batch_size", "8", "--precision", "fp32", "--tracking", "mlflow",
)  # fmt: skip  (16 training images: 2 iterations per epoch)


@pytest.fixture(autouse=True)
def _no_mlflow_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would win over --tracking_uri


def _client(db: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=path_to_sqlite_uri(str(db)))


def _runs(db: Path) -> dict[str, object]:
    client = _client(db)
    exp = client.get_experiment_by_name("monai_experiment")
    return {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}


def _steps(db: Path, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in _client(db).get_metric_history(run_id, key))


def _config_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("config_*.json")) if folder.exists() else []  # not the artifacts under mlruns/


@pytest.mark.slow
def test_interrupted_run_is_killed_unrelated_run_is_new_resume_continues(tmp_path):
    db, eval_dir = tmp_path / "eval" / "mlruns.db", tmp_path / "eval"
    common = (*TINY, "--output_dir", str(eval_dir), "--dataset_dir", str(tmp_path / "shapes"))
    a = tmp_path / "a"
    status, log = _interrupt_with_ctrl_c(a, "--dataset_name", "shapes", *common, "--max_epochs", "30", "--ckpt_dir",
                                         str(a))
    assert status == 130, log[-3000:]
    (run_a,) = _runs(db).values()
    assert run_a.info.status == "KILLED"  # not RUNNING forever
    assert json.loads((a / "mlflow_run.json").read_text())["run_id"] == run_a.info.run_id
    assert _config_files(eval_dir) == []  # the executed config went into the run, not into output_dir
    top = [f.path for f in _client(db).list_artifacts(run_a.info.run_id)]
    assert any(p.startswith("config_") and p.endswith(".json") for p in top), top

    # an unrelated training (own data, other seed and learning rate): a run of its own, with its own params
    b = tmp_path / "b"
    other = run_bundle("--dataset_name", "folder", *common, "--max_epochs", "1", "--seed", "5",
                       "--learning_rate", "0.002", "--ckpt_dir", str(b))  # fmt: skip
    assert other.returncode == 0, other.stderr[-3000:]
    runs = _runs(db)
    assert len(runs) == 2, [r.info.run_name for r in runs.values()]
    run_b = runs[json.loads((b / "mlflow_run.json").read_text())["run_id"]]
    assert run_b.info.run_id != run_a.info.run_id and run_b.info.status == "FINISHED"
    assert runs[run_a.info.run_id].info.status == "KILLED"
    params = run_b.data.params
    assert params["seed"] == "5" and params["learning_rate"] == "0.002" and params["dataset_name"] == "folder"
    assert params["dataset_dir"] == str(tmp_path / "shapes") and len(params["datalist_sha256"]) == 64
    assert params["hu_window"] == "[-1000.0, 400.0]" and params["infer_spacing"] == "[1.0, 1.0]"
    assert not [k for k in params if k.startswith("dataset_kwargs") or k == "data_seed"], sorted(params)
    assert "Traceback" not in other.stderr and "params cannot change" not in other.stderr

    # a resume refused at the trainer's start (another network than the saved one's): one line, no traceback, the
    # run it reopened marked FAILED (not RUNNING forever); the checkpoint untouched
    saved = (a / "checkpoint_last.pt").read_bytes()
    wider = [x if x != "[8, 16, 32]" else "[8, 16, 64]" for x in common]
    changed = run_bundle("--dataset_name", "shapes", *wider, "--max_epochs", "30", "--resume", "true",
                         "--ckpt_dir", str(a))  # fmt: skip
    assert changed.returncode == 2 and "Traceback" not in changed.stderr + changed.stdout, changed.stderr[-3000:]
    errors = [line for line in changed.stderr.splitlines() if "does not fit this run" in line]
    assert len(errors) == 1 and errors[0].startswith("error: --resume: "), changed.stderr[-3000:]
    assert _runs(db)[run_a.info.run_id].info.status == "FAILED"
    assert (a / "checkpoint_last.pt").read_bytes() == saved

    # --resume true continues run A: the same run, FINISHED, every iteration logged once, up to the end
    resumed = run_bundle("--dataset_name", "shapes", *common, "--max_epochs", "30", "--resume", "true",
                         "--ckpt_dir", str(a))  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = _runs(db)
    assert len(runs) == 2 and runs[run_a.info.run_id].info.status == "FINISHED"
    for key in ("train_loss_iter", "lr_group_0"):
        assert _steps(db, run_a.info.run_id, key) == list(range(1, 61)), key
    assert _steps(db, run_a.info.run_id, "val_ged") == list(range(1, 31))
    assert runs[run_a.info.run_id].data.params["dataset_kwargs.num_patients"] == "12"
    assert _config_files(eval_dir) == []

    # the evaluation of A's model: its output folder accepted, its summary in a child run of A's
    out = tmp_path / "eval_a"

    def evaluate(options: list[str], *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file",
             str([str(TRAIN_YAML), str(REPO / "bundle" / "configs" / "evaluate.yaml")]), "--dataset_name", "shapes",
             *options, "--ckpt_dir", str(a), "--output_dir", str(out), "--bootstrap_resamples", "50",
             "--num_plot_images", "1", *extra],
            cwd="/", capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip

    ev = evaluate(common, "--tracking_uri", path_to_sqlite_uri(str(db)), "--sample_counts", "[1, 4]")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert (out / "summary.json").is_file() and _config_files(out) == []
    (run_e,) = [r for r in _runs(db).values() if r.info.run_id not in (run_a.info.run_id, run_b.info.run_id)]
    assert run_e.info.status == "FINISHED" and run_e.data.tags["mlflow.parentRunId"] == run_a.info.run_id
    summary = json.loads((out / "summary.json").read_text())
    ged = {e["S"]: e["mean"] for e in summary["models"]["a"]["metrics"]["ged"]}
    history = {m.step: m.value for m in _client(db).get_metric_history(run_e.info.run_id, "test_ged")}
    assert history == pytest.approx(ged) and sorted(history) == [1, 4]
    arts = [f.path for f in _client(db).list_artifacts(run_e.info.run_id)]
    assert "summary.json" in arts and any(p.startswith("config_") for p in arts), arts

    # a later evaluation without tracking into the same folder is not refused
    again = evaluate([x for x in common if x not in ("--tracking", "mlflow")], "--sample_counts", "[1]")
    assert again.returncode == 0, again.stderr[-3000:]


def test_unreachable_server_is_refused_before_any_data(tmp_path):
    """The bundle command's own check refuses a tracking server that does not answer: its one line, exit 2, before
    any data (MLflow's client would retry for minutes and end in a traceback)."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_bundle(*TINY, "--dataset_name", "shapes", "--tracking_uri", f"http://127.0.0.1:{port}",
                      "--dataset_dir", str(tmp_path / "data"), "--ckpt_dir", str(tmp_path / "models"),
                      "--output_dir", str(tmp_path / "eval"), timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: --tracking_uri http://127.0.0.1:{port}: no MLflow tracking server answers there ([Errno 111] "
        "Connection refused); start it (mlflow server ...) or give another tracking URI, e.g. sqlite:///mlflow.db."
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists() and _config_files(tmp_path / "eval") == []


def test_a_tracking_server_that_does_not_answer_is_asked_once():
    """A peer that takes the connection and closes it without an HTTP answer (a port of another service) is refused
    in one line after exactly one request: no retries, which would keep the command waiting for minutes."""
    import socket
    import threading

    from monai_probunet.bundle_utils import ConfigValueError, check_tracking_uri

    connections = []
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)

        def take_and_close() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                connections.append(conn)  # counted before the client can see the close
                with conn:
                    conn.settimeout(10)
                    conn.recv(65536)  # the request, read: the close is an end of the answer, not a reset

        thread = threading.Thread(target=take_and_close, daemon=True)
        thread.start()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        try:
            with pytest.raises(ConfigValueError, match=rf"^--tracking_uri {uri}: no MLflow tracking server answers "
                                                       r"there \(Remote end closed connection without response\);"):
                check_tracking_uri(uri)
        finally:
            stop.set()
            thread.join(timeout=10)
    assert len(connections) == 1


def test_a_sqlite_store_that_cannot_be_created_is_refused(tmp_path):
    """A SQLite store whose folder cannot be created (below a file) is refused by the check the bundle command runs
    before any data (the server case above), not by MLflow's traceback when the run opens."""
    from monai_probunet.bundle_utils import ConfigValueError, check_tracking_uri

    (tmp_path / "afile").write_text("mine")
    uri = f"sqlite:///{tmp_path}/afile/runs/m.db"
    said = (f"--tracking_uri {uri}: the database's folder {tmp_path / 'afile' / 'runs'} cannot be created: "
            f"{tmp_path / 'afile'} is a file; give a database in a folder you can write, e.g. sqlite:///mlflow.db.")
    with pytest.raises(ConfigValueError) as refused:
        check_tracking_uri(uri)
    assert str(refused.value) == said
    assert check_tracking_uri(f"sqlite:///{tmp_path}/new/runs/m.db") == f"sqlite:///{tmp_path}/new/runs/m.db"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and (tmp_path / "afile").read_text() == "mine"


def test_refused_run_leaves_no_executed_config(tmp_path):
    proc = run_bundle(*TINY, "--dataset_name", "shapes", "--max_epochs", "0", "--output_dir", str(tmp_path / "eval"),
                      "--dataset_dir", str(tmp_path / "data"), "--ckpt_dir", str(tmp_path / "models"))  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --max_epochs"), proc.stderr
    assert (tmp_path / "eval").is_dir() and _config_files(tmp_path / "eval") == []


def test_data_params_log_the_generator_settings_of_built_in_data_only(tmp_path):
    from monai_probunet.handlers.tracking import data_params, flatten_params

    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"training": []}')
    own = flatten_params(data_params("folder", tmp_path, datalist, 0, {"num_patients": 90}))
    digest = hashlib.sha256(b'{"training": []}').hexdigest()
    assert own == {"dataset_name": "folder", "dataset_dir": str(tmp_path), "datalist_sha256": digest}
    built_in = flatten_params(data_params("shapes", tmp_path, datalist, 3, {"num_patients": 12}))
    assert built_in["data_seed"] == 3 and built_in["dataset_kwargs.num_patients"] == 12


def test_summary_metrics_use_the_sample_count_as_step():
    from monai_probunet.handlers.evaluation_tracking import _summary_metrics

    summary = {
        "split": "test",
        "models": {
            "m": {"metrics": {"ged": [{"S": 1, "mean": 0.5}, {"S": 16, "mean": 0.3}], "iou": [{"S": 1, "mean": None}]},
                  "presence": {"test_accuracy": 0.75}},
            "oracle": {"metrics": {"ged": [{"S": 1, "mean": 0.2}]}, "presence": {}},
        },
        "references": {"empty": {"ged": 0.9}},
    }  # fmt: skip
    assert sorted(_summary_metrics(summary)) == sorted([
        ("test_ged", 0.5, 1), ("test_ged", 0.3, 16), ("test_presence_accuracy", 0.75, 0),
        ("oracle_test_ged", 0.2, 1), ("test_ged_empty", 0.9, 0),
    ])  # fmt: skip


def test_an_evaluation_tracked_in_another_store_than_its_training_says_so(tmp_path, caplog):
    """The run record names the training's store: an evaluation logged into another one (no --tracking_uri) warns
    instead of silently losing the link to its training run; a setting not given (None) is not logged as 'None'."""
    import logging

    from monai.handlers import MLFlowHandler

    from monai_probunet.handlers import log_evaluation
    from monai_probunet.handlers.tracking import RUN_RECORD

    ckpt = tmp_path / "models"
    ckpt.mkdir()
    trained_in = path_to_sqlite_uri(str(tmp_path / "server.db"))
    (ckpt / RUN_RECORD).write_text(json.dumps({"run_id": "0" * 32, "run_name": "run_x", "experiment_id": "1",
                                               "tracking_uri": trained_in}))
    db = tmp_path / "local.db"
    handler = MLFlowHandler(tracking_uri=path_to_sqlite_uri(str(db)), experiment_name="eval")
    summary = {"split": "test", "models": {"m": {"metrics": {"ged": [{"S": 16, "mean": 0.3}]}}}, "references": {}}
    with caplog.at_level(logging.WARNING, logger="monai_probunet.handlers.evaluation_tracking"):
        log_evaluation(summary, [handler], tmp_path, ckpt / "model.pt", {"model_name": None, "seed": 0})
    assert f"the training of {ckpt / 'model.pt'} was tracked in {trained_in}; this evaluation goes into" in caplog.text
    (run,) = _client(db).search_runs([_client(db).get_experiment_by_name("eval").experiment_id])
    assert run.data.params == {"seed": "0"} and run.data.metrics == {"test_ged": 0.3}


def test_the_executed_config_is_taken_from_monais_file_only(tmp_path):
    """MONAI's own config_<time>.json is read and removed (the run uploads it); a --save_execute_config path the
    user gave is read and kept."""
    from monai_probunet.handlers.tracking import _EXECUTED_CONFIG, take_executed_config

    monai_file, users_file = tmp_path / "config_20261206_101112.json", tmp_path / "my_config.json"
    for path in (monai_file, users_file):
        path.write_text('{"seed": 0}')
    try:
        assert take_executed_config(str(monai_file)) == monai_file.name and not monai_file.exists()
        assert take_executed_config(str(users_file)) == users_file.name and users_file.read_text() == '{"seed": 0}'
        assert _EXECUTED_CONFIG[users_file.name] == '{"seed": 0}'
        assert take_executed_config(True) is None  # no tracking: nothing to take
    finally:
        _EXECUTED_CONFIG.clear()


def test_under_torchrun_the_executed_config_is_read_when_the_run_opens_and_removed_at_exit(tmp_path, monkeypatch):
    """Every torchrun process writes the config, under one name within a second: none reads or removes it at
    start-up, where another may still be writing it or have removed it already."""
    from monai_probunet.handlers import tracking

    monkeypatch.setenv("WORLD_SIZE", "2")
    monai_file, users_file = tmp_path / "config_20261206_101112.json", tmp_path / "my_config.json"
    for path in (monai_file, users_file):
        path.write_text('{"seed": 0}')
    try:
        assert tracking.take_executed_config(str(monai_file)) is None and monai_file.exists()
        assert tracking.take_executed_config(str(users_file)) is None and not tracking._EXECUTED_CONFIG
        monai_file.write_text('{"seed": 1}')  # another rank writes it again
        tracking._read_deferred_configs()  # when the MLflow run opens
        assert tracking._EXECUTED_CONFIG == {monai_file.name: '{"seed": 1}', users_file.name: '{"seed": 0}'}
        tracking._remove_deferred_configs()  # at exit
        assert not monai_file.exists() and users_file.read_text() == '{"seed": 0}'
    finally:
        tracking._EXECUTED_CONFIG.clear()
        tracking._DEFERRED_CONFIGS.clear()


def _compare_tracking(monkeypatch):
    """``benchmarks/compare_tracking.py``, imported as ``compare.py`` imports it (by name, from its folder)."""
    import importlib

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("compare_tracking")


def test_compare_puts_its_artifacts_where_a_bundle_training_puts_them(tmp_path, monkeypatch):
    """The experiment ``compare.py --tracking`` creates keeps its artifacts beside the database, as the experiment a
    bundle training creates in the same store would: not in ./mlruns of the folder it runs from."""
    from mlflow import MlflowClient
    from monai.handlers import MLFlowHandler
    from monai.utils import path_to_uri

    compare_tracking = _compare_tracking(monkeypatch)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    db = tmp_path / "store" / "runs.db"
    uri = path_to_sqlite_uri(str(db))
    tracking = compare_tracking.open_experiment(uri, "cmp", REPO)
    location = MlflowClient(uri).get_experiment(tracking["experiment_id"]).artifact_location
    assert location == MLFlowHandler(tracking_uri=uri).artifact_location == path_to_uri(db.parent / "mlruns")
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.md").write_text("| model | GED |\n")
    run_id = compare_tracking.log_comparison(tracking, out, {}, {}, {"task": "lidc"})
    assert [p.name for p in (db.parent / "mlruns").rglob("results.md")] == ["results.md"]
    assert MlflowClient(uri).get_run(run_id).info.artifact_uri.startswith(location)
    assert not (elsewhere / "mlruns").exists()


def test_the_ensembles_evaluation_is_a_child_run_like_the_other_evaluations(tmp_path, monkeypatch):
    """A model trained as members (the ensemble: one training run per member) has no one training run its
    evaluation could be a child of: the comparison nests the member trainings and its evaluations under one run of
    the model, once (a later --report or --resume reuses it); another model's runs are left as the bundle linked
    them."""
    from mlflow import MlflowClient

    compare_tracking = _compare_tracking(monkeypatch)
    uri = path_to_sqlite_uri(str(tmp_path / "runs.db"))
    tracking = compare_tracking.open_experiment(uri, "cmp", REPO)
    client, experiment_id = MlflowClient(uri), tracking["experiment_id"]

    def run(name: str, parent: str | None = None) -> str:  # a run as a bundle training or evaluation leaves it
        tags = {} if parent is None else {"mlflow.parentRunId": parent}
        run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        client.set_terminated(run_id)
        return run_id

    probunet = run("probunet")
    eval_probunet = run("eval_probunet", probunet)
    members = [run(f"unet_ensemble_member_{s}") for s in range(2)]
    evaluations = [run("eval_unet_ensemble"), run("eval_validation_unet_ensemble")]
    summaries = {name: {"models": {name: {"metrics": {"ged": [{"S": 16, "mean": 0.3}]}}}}
                 for name in ("probunet", "unet_ensemble")}  # fmt: skip
    (tmp_path / "out").mkdir()
    compare_tracking.log_comparison(tracking, tmp_path / "out", summaries, {}, {})
    runs = {r.info.run_name: r for r in client.search_runs([experiment_id])}
    ensemble = runs["unet_ensemble"]
    assert ensemble.info.status == "FINISHED" and ensemble.data.params == {"members": "2"}
    parents = {r.info.run_id: r.data.tags.get("mlflow.parentRunId") for r in runs.values()}
    assert [parents[i] for i in members + evaluations] == [ensemble.info.run_id] * 4
    assert parents[eval_probunet] == probunet and parents[probunet] is None and parents[ensemble.info.run_id] is None
    again = run("eval_unet_ensemble")  # a --resume: its trainings continue, its evaluations are new runs
    compare_tracking.log_comparison(tracking, tmp_path / "out", summaries, {}, {})
    names = [r.info.run_name for r in client.search_runs([experiment_id])]
    assert names.count("unet_ensemble") == 1
    assert client.get_run(again).data.tags["mlflow.parentRunId"] == ensemble.info.run_id
