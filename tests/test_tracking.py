"""`--tracking mlflow`: params, ELBO terms per iteration and epoch, GED terms per validation, learning rate, the
executed config and the PNG sample grids, read back with MlflowClient from a real `mlflow server` and from the
default SQLite store."""

from __future__ import annotations

import math
import os
import re
import socket
import sys
from pathlib import Path

import pytest
from monai.utils import path_to_sqlite_uri

from .conftest import background_server, run_bundle
from .test_bundle import SMALL

MLFLOW_ARGS = (*SMALL, "--batch_size", "8", "--tracking", "mlflow")  # 16 training images: 2 iterations per epoch
EXPECTED_PARAMS = {
    "seed": "0",
    "data_seed": "0",
    "dataset_name": "shapes",
    "dataset_kwargs.num_patients": "12",
    "dataset_kwargs.image_size": "32",
    "channels": "[8, 16, 32]",
    "latent_dim": "3",
    "beta": "10.0",
    "batch_size": "8",
    "max_epochs": "2",
    "num_samples": "16",
    "network": "ProbUNet",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def no_mlflow_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would win over --tracking_uri


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, proxied artifacts in tmp); yields its URI."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", path_to_sqlite_uri(str(root / "mlflow.db")),
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    uri = f"http://127.0.0.1:{port}"
    # the server, its uvicorn worker and job consumers share one process group, stopped as a whole
    with background_server(cmd, f"{uri}/health", root / "server.log", 90, "mlflow server", env=env):
        yield uri


def _check_run(tracking_uri: str, log: str, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name("monai_experiment")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    run_id = run.info.run_id

    params = run.data.params
    for k, v in EXPECTED_PARAMS.items():
        assert params.get(k) == v, (k, params.get(k))
    for k in ("learning_rate", "weight_decay", "precision", "precision_resolved", "epoch_length"):
        assert k in params, sorted(params)

    def history(key: str) -> list[tuple[int, float]]:
        return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))

    for key in ("train_loss_iter", "train_ce_iter", "train_kl_iter", "lr_group_0"):  # per iteration
        h = history(key)
        assert [s for s, _ in h] == [1, 2, 3, 4] and all(math.isfinite(v) for _, v in h), (key, h)
    per_epoch = ("train_loss", "train_ce", "train_kl", "val_ged", "val_d_sy", "val_d_ss", "val_d_yy", "val_ged_vote")
    for key in per_epoch:
        h = history(key)
        assert [s for s, _ in h] == [1, 2] and all(math.isfinite(v) for _, v in h), (key, h)
    vote = history("val_ged_vote")  # the graders' majority vote on the same split: the same at every validation
    assert vote[0][1] == vote[1][1] and 0 < vote[0][1] < 2
    ce, kl, loss = history("train_ce_iter"), history("train_kl_iter"), history("train_loss_iter")
    assert all(abs(c + 10 * k - t) < 1e-3 * abs(t) for (_, c), (_, k), (_, t) in zip(ce, kl, loss))  # beta = 10
    assert history("lr_group_0")[0][1] == pytest.approx(1e-3)
    logged = [float(v) for v in re.findall(r"Epoch\[\d+\] Metrics -- .*val_ged: ([0-9.]+)", log)]  # StatsHandler
    assert logged == pytest.approx([v for _, v in history("val_ged")], abs=6e-5), log[-2000:]

    top = {a.path for a in client.list_artifacts(run_id)}
    assert any(re.fullmatch(r"config_\d{8}_\d{6}\.json", p) for p in top), top  # the executed config
    grids = sorted(a.path for a in client.list_artifacts(run_id, "samples"))
    assert grids == ["samples/samples_epoch_0001.png", "samples/samples_epoch_0002.png"], grids
    png = Path(client.download_artifacts(run_id, grids[-1], str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_mlflow_server_records_params_metrics_and_sample_grids(tmp_path, mlflow_server, no_mlflow_env):
    proc = run_bundle(
        *MLFLOW_ARGS, "--tracking_uri", mlflow_server,
        "--ckpt_dir", str(tmp_path / "models"), "--dataset_dir", str(tmp_path / "data"),
        "--output_dir", str(tmp_path / "eval"),
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert not (tmp_path / "eval" / "mlruns.db").exists()  # everything went to the server
    _check_run(mlflow_server, log, tmp_path)


@pytest.mark.slow
def test_mlflow_default_sqlite_store(tmp_path, no_mlflow_env):
    proc = run_bundle(
        *MLFLOW_ARGS,
        "--ckpt_dir", str(tmp_path / "models"), "--dataset_dir", str(tmp_path / "data"),
        "--output_dir", str(tmp_path / "eval"),
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    db = tmp_path / "eval" / "mlruns.db"
    assert db.is_file()
    _check_run(path_to_sqlite_uri(str(db)), log, tmp_path)
    assert (tmp_path / "models" / "checkpoint_final.pt").is_file()


def test_configure_mlflow_is_a_no_op_without_tracking():
    from monai.handlers import StatsHandler

    from monai_probunet.handlers import configure_mlflow, flatten_params

    assert configure_mlflow([StatsHandler()], [StatsHandler()], params={"seed": 0}) is False
    assert configure_mlflow(None, None) is False
    assert flatten_params({"a": 1, "b": {"c": [1, 2], "d": {"e": "x"}}}) == {"a": 1, "b.c": [1, 2], "b.d.e": "x"}
