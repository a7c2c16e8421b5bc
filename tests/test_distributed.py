"""Multi-process training (2 CPU processes under torchrun with gloo), resume after SIGKILL from the atomic "last"
checkpoint, and run-to-run determinism of the bundle on CPU.

The small handlers below are added to the bundle runs through an extra config file (`tests` importable via
PYTHONPATH) and record what each rank really did."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.utils import path_to_sqlite_uri

from .conftest import REPO, TRAIN_YAML, run_bundle, train_yaml_network
from .test_bundle import SMALL

MULTI_GPU_YAML = REPO / "bundle" / "configs" / "multi_gpu_train.yaml"


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _record(tag: str, record: dict) -> None:
    """Appends ``record`` as a JSON line to ``$RECORDS_DIR/<tag>-<rank>.jsonl``: one file per rank, because the
    ranks share torchrun's stdout and their lines can interleave there."""
    path = Path(os.environ["RECORDS_DIR"]) / f"{tag}-{_rank()}.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _fingerprint(image: torch.Tensor) -> str:
    """Identifies an image up to flips and 90-degree rotations (the training augmentation): its sorted pixels."""
    return hashlib.sha1(torch.sort(image.detach().float().flatten()).values.numpy().tobytes()).hexdigest()[:12]


class SeenImages:
    """Records ``SEEN {"rank", "epoch", "images"}`` after each epoch: fingerprints of the images this rank trained
    on."""

    def attach(self, engine: Engine) -> None:
        self.images: list[str] = []
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.images.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.report)

    def collect(self, engine: Engine) -> None:
        self.images += [_fingerprint(x) for x in engine.state.batch["image"]]

    def report(self, engine: Engine) -> None:
        _record("SEEN", {"rank": _rank(), "epoch": engine.state.epoch, "images": self.images})


class GatheredCount:
    """Records ``GATHERED {"rank", "epoch", "local", "val_ged"}`` after each validation: images this rank evaluated
    and the length of the (all-gathered) per-image GED buffer the metric was computed from."""

    def attach(self, engine: Engine) -> None:
        self.local = 0
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.count)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def reset(self, engine: Engine) -> None:
        self.local = 0

    def count(self, engine: Engine) -> None:
        self.local += len(engine.state.batch["image"])

    def report(self, engine: Engine) -> None:
        n = len(engine.state.metric_details["val_ged"])
        _record("GATHERED", {"rank": _rank(), "epoch": engine.state.epoch, "local": self.local, "val_ged": n})


class KillAt:
    """SIGKILLs its own process after the first iteration of epoch ``epoch`` (a crash in the middle of it)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch == self.epoch:
            print(f"KILLING at epoch {engine.state.epoch}, iteration {engine.state.iteration}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}


def _share_speedup_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from monai_probunet.engines import precision

    # each rank's own timing would differ: 2x on rank 0, 0.5x on rank 1
    precision._pass_time_ratio = lambda threads, first, second, norm=True: 2.0 if rank == 0 else 0.5
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        shared = precision.share_cpu_speedups()
        result = [
            shared,
            precision.cpu_channels_last_speedup("fp32"),
            precision.resolve_channels_last("auto", "cpu", "fp32"),
            precision.resolve_channels_last("auto", "cpu", "fp32", norm=False),
            precision.resolve_precision("auto", "cpu"),
        ]
        Path(out, f"{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_every_rank_uses_rank0s_start_up_timings(tmp_path):
    """``precision: auto`` and ``channels_last: auto`` on a CPU are timings; in a process group every rank takes rank
    0's (here 2x on rank 0, 0.5x on rank 1), so all ranks compute in one precision and one memory format."""
    from monai_probunet.engines.precision import cpu_bf16_flags

    torch.multiprocessing.spawn(_share_speedup_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    native = bool(cpu_bf16_flags())
    expected_shared = {"channels_last_fp32": 2.0, "channels_last_fp32_no_norm": 2.0, **(
        {"channels_last_bf16": 2.0, "channels_last_bf16_no_norm": 2.0, "bf16": 2.0} if native else {})}
    assert results[0] == results[1] == [expected_shared, 2.0, True, True, "bf16" if native else "fp32"]


def _dirs(tmp_path: Path) -> tuple[str, ...]:
    return (
        "--ckpt_dir", str(tmp_path / "models"), "--dataset_dir", str(tmp_path / "data"),
        "--output_dir", str(tmp_path / "eval"),
    )  # fmt: skip


def take_executed_config_late_on_rank0(save_execute_config):
    """The bundle's first step, 2 s later on rank 0 than on rank 1 (both wrote MONAI's executed config, under one
    name where they started within the same second)."""
    from monai_probunet.handlers.tracking import take_executed_config

    time.sleep(2 if os.environ["RANK"] == "0" else 0)
    return take_executed_config(save_execute_config)


def _records(records_dir: Path, tag: str) -> list[dict]:
    return [json.loads(line) for p in sorted(records_dir.glob(f"{tag}-*.jsonl")) for line in p.read_text().splitlines()]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    """Two processes: disjoint halves of the data, all-gathered validation, files and MLflow from rank 0 only."""
    extra = tmp_path / "count.yaml"
    extra.write_text(
        "+train#handlers: [{_target_: tests.test_distributed.SeenImages}]\n"
        "+validate#handlers: [{_target_: tests.test_distributed.GatheredCount}]\n"
        "initialize#1: {_target_: tests.test_distributed.take_executed_config_late_on_rank0, "
        "save_execute_config: '@save_execute_config'}\n"
    )
    configs = str([str(TRAIN_YAML), str(MULTI_GPU_YAML), str(extra)])
    db = tmp_path / "mlruns.db"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()),
        "-m", "monai.bundle", "run", "training", "--config_file", configs, *SMALL, *_dirs(tmp_path),
        "--tracking", "mlflow", "--tracking_uri", path_to_sqlite_uri(str(db)),
    ]  # fmt: skip
    records = tmp_path / "records"
    records.mkdir()
    env = {**_env(), "RECORDS_DIR": str(records)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/", env=env, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert log.count("process group: backend gloo, rank") == 2

    datalist = json.loads((tmp_path / "data" / "datalist.json").read_text())
    n_train, n_val = len(datalist["training"]), len(datalist["validation"])
    assert n_train % 2 == 0 and n_val >= 2
    seen = _records(records, "SEEN")
    assert sorted((r["epoch"], r["rank"]) for r in seen) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for epoch in (1, 2):
        r0, r1 = (set(r["images"]) for r in sorted((r for r in seen if r["epoch"] == epoch), key=lambda r: r["rank"]))
        assert len(r0) == len(r1) == n_train // 2 and not r0 & r1, (epoch, r0, r1)  # disjoint halves
        assert len(r0 | r1) == n_train
    first = {r["rank"]: r["images"] for r in seen if r["epoch"] == 1}
    second = {r["rank"]: r["images"] for r in seen if r["epoch"] == 2}
    assert first != second  # set_epoch: a new shuffle (and split) each epoch

    gathered = _records(records, "GATHERED")
    assert len(gathered) == 4 and all(g["val_ged"] == n_val for g in gathered), gathered  # all-gathered buffers
    assert sum(g["local"] for g in gathered if g["epoch"] == 1) == n_val  # sharded validation, no duplicates

    # logging, GED and checkpoint files from rank 0 only
    assert len(re.findall(r"Epoch\[\d+\] Metrics -- .*val_ged: [0-9.]+", log)) == 2, log[-3000:]
    assert len(re.findall(r"Epoch\[\d+\] Metrics -- .*train_ce: [0-9.]+", log)) == 2
    assert log.count("Train completed, saved final checkpoint") == 1
    assert log.count("checkpoint_last.pt at epoch") == 2
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "checkpoint_final.pt", "checkpoint_last.pt", "mlflow_run.json", "model.json", "model.pt",
        "model_best_validation.pt",
    ]
    net = train_yaml_network(channels=[8, 16, 32])
    net.load_state_dict(torch.load(models / "model.pt", weights_only=True))  # unwrapped from DDP
    last = torch.load(models / "checkpoint_last.pt", weights_only=True)
    net.load_state_dict(last["model"])
    assert last["trainer"]["iteration"] == 2  # 8 images per rank and batch 16: one iteration per epoch

    # one MLflow run, with the complete executed config; none left in the output folder by either rank
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=path_to_sqlite_uri(str(db)))
    (run,) = client.search_runs([client.get_experiment_by_name("monai_experiment").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["val_ged"] >= 0
    (config,) = [a.path for a in client.list_artifacts(run.info.run_id) if a.path.startswith("config_")]
    executed = json.loads(Path(client.download_artifacts(run.info.run_id, config, str(tmp_path))).read_text())
    assert executed["max_epochs"] == 2 and executed["channels"] == [8, 16, 32]
    assert sorted((tmp_path / "eval").glob("config_*.json")) == []


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path):
    """A run killed in the middle of epoch 3 (after the "last" checkpoint of epoch 2) continues at epoch 3."""
    killer = tmp_path / "kill.yaml"
    killer.write_text("+train#handlers: [{_target_: tests.test_distributed.KillAt, epoch: 3}]\n")
    args = (*SMALL, "--max_epochs", "6", "--val_interval", "2", "--resume", "true", *_dirs(tmp_path))
    models = tmp_path / "models"

    def run(*config_files: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file"]
        cmd += [str([str(f) for f in config_files]), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd="/", env=_env(), check=False)

    first = run(TRAIN_YAML, killer)
    log1 = first.stdout + first.stderr
    assert first.returncode == -signal.SIGKILL, log1[-3000:]
    assert "no checkpoint at" in log1 and "KILLING at epoch 3" in log1  # --resume true on a fresh start is fine
    assert not (models / "checkpoint_final.pt").exists()
    last = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2 and last["lr_scheduler"]["last_epoch"] == 2
    assert last["evaluator_best"]["best_metric_epoch"] == 2
    ged2 = float(re.search(r"Epoch\[2\] Metrics -- .*val_ged: ([0-9.]+)", log1).group(1))

    second = run(TRAIN_YAML)  # the same command, without the crash
    log2 = second.stdout + second.stderr
    assert second.returncode == 0, log2[-3000:]
    assert re.search(r"Resumed from \S*checkpoint_last\.pt: resuming from iteration 2, epoch 2 until 6 epochs", log2)
    epochs = [int(e) for e in re.findall(r"ProbUNetTrainer - INFO - Epoch\[(\d+)\] Complete", log2)]
    assert epochs == [3, 4, 5, 6], log2[-3000:]
    final = torch.load(models / "checkpoint_final.pt", weights_only=True)
    steps = {float(s["step"]) for s in final["optimizer"]["state"].values()}
    assert steps == {6.0}  # Adam's step count continued from the restored optimizer state (2 + 4 iterations)
    assert final["lr_scheduler"]["last_epoch"] == 6
    last = torch.load(models / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 6
    assert all(torch.equal(last["model"][k], v) for k, v in final["model"].items())
    # the best GED of epoch 2 (before the crash) still competes after the resume
    ged4 = float(re.search(r"Epoch\[4\] Metrics -- .*val_ged: ([0-9.]+)", log2).group(1))
    best = re.findall(r"Key metric: val_ged best value: ([0-9.]+) at epoch: (\d+)", log2)[0]
    assert int(best[1]) == (4 if ged4 < ged2 else 2), (best, ged2, ged4)
    assert abs(float(best[0]) - min(ged2, ged4)) < 1e-4, (best, ged2, ged4)


def test_killed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    """SIGKILL in the middle of writing checkpoint_last.pt: the previous complete checkpoint stays in place (the
    bytes go to a temporary file in the same folder, renamed only when complete) and is what a resume loads."""
    script = f"""
import io, os, signal, torch
from ignite.engine import Engine
from monai_probunet.handlers import LastCheckpoint

def half_save(obj, f, **kwargs):  # writes half of the checkpoint's bytes, then the process is killed
    buf = io.BytesIO()
    real_save(obj, buf, **kwargs)
    data = buf.getvalue()
    f = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    f.write(data[: len(data) // 2])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)

engine = Engine(lambda e, b: None)
net = torch.nn.Linear(300, 200)
handler = LastCheckpoint({str(tmp_path)!r}, {{"model": net}})
handler.attach(engine)
engine.state.iteration, engine.state.epoch, engine.state.epoch_length = 5, 5, 1
handler.save(engine)
print("FIRST SAVED", flush=True)
real_save, torch.save = torch.save, half_save
with torch.no_grad():
    net.weight.add_(1.0)
engine.state.iteration, engine.state.epoch = 6, 6
handler.save(engine)
print("NOT REACHED", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=_env())
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "FIRST SAVED" in proc.stdout and "NOT REACHED" not in proc.stdout
    leftovers = [p for p in tmp_path.iterdir() if p.name != "checkpoint_last.pt"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".checkpoint_last.pt.")
    partial = leftovers[0] / "checkpoint_last.pt"  # saved under its final name in a temporary folder
    assert leftovers[0].name.endswith(".tmp") and leftovers[0].is_dir() and partial.stat().st_size > 1000
    try:
        torch.load(partial, weights_only=True)
        raise AssertionError("the half-written file should not be loadable")
    except RuntimeError:
        pass

    from ignite.engine import Engine

    from monai_probunet.handlers import LastCheckpoint

    net = torch.nn.Linear(300, 200)
    engine = Engine(lambda e, b: None)
    handler = LastCheckpoint(tmp_path, {"model": net}, resume=True)
    handler.attach(engine)
    engine.state.max_epochs = 10
    handler.load(engine)
    assert engine.state.iteration == 5 and engine.state.epoch == 5
    assert float(net.weight.detach().abs().max()) < 1.0  # the weights of the complete checkpoint, not the +1 ones


@pytest.mark.slow
def test_same_seed_gives_bit_identical_weights_and_hypotheses(tmp_path):
    from monai_probunet.engines import SamplingInferer

    runs = []
    for name in ("a", "b"):
        d = tmp_path / name
        # precision and memory format pinned: `auto` is a timing taken anew by every run, and where bf16 or
        # channels-last measures close to its 1.1x threshold (e.g. a native-bf16 CPU under load) two runs can choose
        # differently
        proc = run_bundle(
            *SMALL, "--ckpt_dir", str(d / "models"), "--dataset_dir", str(tmp_path / "data"), "--precision", "fp32",
            "--channels_last", "false",
        )  # fmt: skip
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-3000:]
        runs.append((torch.load(d / "models" / "checkpoint_final.pt", weights_only=True), log))
    (a, log_a), (b, log_b) = runs
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(state_a[i]["exp_avg_sq"], state_b[i]["exp_avg_sq"]) for i in state_a)
    geds = [re.findall(r"Epoch\[\d+\] Metrics -- .*val_ged: ([0-9.]+)", log) for log in (log_a, log_b)]
    assert len(geds[0]) == 2 and geds[0] == geds[1]

    net = train_yaml_network(channels=[8, 16, 32])
    net.load_state_dict(a["model"])
    net.eval()
    image = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h1 = SamplingInferer(num_samples=4, seed=7)(image, net)
        h2 = SamplingInferer(num_samples=4, seed=7)(image, net)
    assert torch.equal(h1, h2)
