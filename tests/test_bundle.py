"""The bundle command end to end: a short training run on `shapes`, and clear errors at start."""

from __future__ import annotations

import re

import pytest
import torch

from .conftest import REPO, run_bundle, train_yaml_network

SMALL = (
    "--dataset_name", "shapes",  # engine tests: 12 patients x 2 images of 32 x 32 -> 16 training images
    "--dataset_kwargs", "{'num_patients': 12, 'image_size': 32}",
    "--channels", "[8, 16, 32]",
    "--max_epochs", "2",
    "--val_interval", "1",
    "--batch_size", "16",  # one iteration per epoch
)  # fmt: skip


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_bundle_training_writes_checkpoint_and_finite_ged(tmp_path):
    proc = run_bundle(*SMALL, "--ckpt_dir", str(tmp_path / "models"), "--dataset_dir", str(tmp_path / "data"))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    geds = [float(v) for v in re.findall(r"val_ged: ([0-9.]+)", log)]
    assert len(geds) >= 2 and all(0.0 <= g <= 2.0 for g in geds), log[-2000:]
    assert re.search(r"train_ce: [0-9.]+", log) and re.search(r"train_kl: [0-9.]+", log)
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    net = train_yaml_network(channels=[8, 16, 32])
    net.load_state_dict(state)
    final = torch.load(tmp_path / "models" / "checkpoint_final.pt", weights_only=True)["model"]
    assert state.keys() == final.keys() and all(torch.equal(state[k], final[k]) for k in state)  # the last epoch's
    best = torch.load(tmp_path / "models" / "model_best_validation.pt", weights_only=True)
    assert best.keys() == state.keys()
    assert (tmp_path / "data" / "datalist.json").is_file()


@pytest.mark.slow
def test_bundle_training_channels_last(tmp_path):
    """`--channels_last true` trains and validates on the CPU: the instance norm's channels-last kernel takes the
    MetaTensor batches MONAI's loaders give (the in-place ReLU after it refused them as views)."""
    dirs = ("--ckpt_dir", str(tmp_path / "models"), "--dataset_dir", str(tmp_path / "data"))
    proc = run_bundle(*SMALL, "--channels_last", "true", *dirs)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "memory format channels-last" in log
    geds = [float(v) for v in re.findall(r"val_ged: ([0-9.]+)", log)]
    assert len(geds) >= 2 and all(0.0 <= g <= 2.0 for g in geds), log[-2000:]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_bundle_root_is_the_bundle_folder_seen_from_where_the_command_runs(tmp_path, monkeypatch):
    """From the repository root or the bundle folder (no command line read); elsewhere one error naming the folder."""
    from monai_probunet.bundle_utils import ConfigValueError, bundle_root

    assert bundle_root(REPO) == bundle_root(REPO / "bundle") == str(REPO / "bundle")
    monkeypatch.chdir(REPO)
    assert bundle_root() == str(REPO / "bundle")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigValueError, match=f"--bundle_root: {tmp_path} holds neither configs/"):
        bundle_root()
    (tmp_path / "configs").mkdir()  # a bundle folder of the user's own
    assert bundle_root() == str(tmp_path.resolve())


@pytest.mark.slow
def test_unknown_dataset_fails_at_start(tmp_path):
    proc = run_bundle("--dataset_name", "nope", "--dataset_dir", str(tmp_path / "d"), "--ckpt_dir", str(tmp_path))
    assert proc.returncode != 0
    assert "unknown dataset name 'nope'" in proc.stderr + proc.stdout
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_wrong_channel_count_fails_at_start(tmp_path):
    proc = run_bundle(*SMALL, "--in_channels", "3", "--dataset_dir", str(tmp_path / "d"), "--ckpt_dir", str(tmp_path))
    assert proc.returncode != 0
    assert "expects images of shape B x 3 x S x S (in_channels=3), got a tensor of shape (16, 1, 32, 32)" in proc.stderr + proc.stdout
    assert "Epoch[1] Complete" not in proc.stdout + proc.stderr


def test_the_bundle_metadata_states_the_shipped_models_scores_as_the_readme_does():
    """``metadata.json``'s ``eval_metrics`` (what the model zoo shows) and the README's row of the shipped ProbUNet
    are the same figures: retraining the shipped model means updating both."""
    import json

    meta = json.loads((REPO / "bundle/configs/metadata.json").read_text())["eval_metrics"]
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| **ProbUNet** (shipped"))
    cells = [c.strip().strip("*") for c in row.split("|")[2:]]
    s1, s4, s8, s16, _, iou, presence, validation = (float(c) if c not in ("–", "") else None for c in cells[:8])
    assert (meta["ged_s1"], meta["ged_s4"], meta["ged_s8"], meta["ged_s16"]) == (s1, s4, s8, s16)
    assert (meta["matched_iou_s16"], meta["presence_ambiguity_accuracy"], meta["validation_ged_s16"]) == (
        iou, presence, validation)
