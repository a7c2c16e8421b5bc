from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A small ``shapes`` dataset (24 patients x 2 images of 32 x 32), generated once per test session."""
    from monai_probunet.data import prepare_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    return Path(prepare_dataset("shapes", root, seed=3, num_patients=24, images_per_patient=2, image_size=32))


def run_bundle(*args: str, config_file: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run training`` in a subprocess from a neutral working directory."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_file or str(TRAIN_YAML)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd="/", env=env, check=False
    )
