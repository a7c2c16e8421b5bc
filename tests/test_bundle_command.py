"""``python -m monai_probunet.bundle``: MONAI's bundle command with its own options checked before MONAI runs.

A typo in an option of the command itself (``--tracking``, ``--config_file``) and Ctrl-C while MONAI is still being
imported end in one line, not MONAI's traceback; everything else is MONAI's command unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from monai_probunet.bundle import check_run_options
from monai_probunet.bundle_options import command_options
from monai_probunet.bundle_utils import ConfigValueError

from .conftest import REPO, TRAIN_YAML, terminal_job

CONFIGS = TRAIN_YAML.parent


def test_the_command_line_is_read_as_the_bundle_command_reads_it():
    files = f"['{TRAIN_YAML}', '{CONFIGS / 'evaluate.yaml'}']"
    positional, options = command_options(["run", "evaluating", "--config_file", files, "--tracking=mlflow",
                                           "--resume", "--max_epochs", "3", "--hu_window", "[-1000, 400]"])
    assert positional == ["run", "evaluating"]
    assert options == {"config_file": [str(TRAIN_YAML), str(CONFIGS / "evaluate.yaml")], "tracking": "mlflow",
                       "resume": True, "max_epochs": 3, "hu_window": [-1000, 400]}


def test_a_mistyped_tracking_option_names_the_accepted_values(tmp_path):
    run = ["run", "training", "--config_file", str(TRAIN_YAML)]
    with pytest.raises(ConfigValueError, match=r"^--tracking mlfow: expected mlflow, or a tracking settings file "
                                               r"\(\.json, \.yaml, \.yml\) \(did you mean mlflow\?\)\.$"):
        check_run_options([*run, "--tracking", "mlfow"])
    with pytest.raises(ConfigValueError, match=r"^--tracking 1: expected mlflow"):
        check_run_options([*run, "--tracking=1"])
    with pytest.raises(ConfigValueError, match=rf"^--tracking {tmp_path / 'mine.yaml'}: no such file\.$"):
        check_run_options([*run, "--tracking", str(tmp_path / "mine.yaml")])
    settings = tmp_path / "mine.yaml"
    settings.write_text("handlers_id: {}\nconfigs: {}\n")
    check_run_options([*run, "--tracking", str(settings)])  # MONAI's settings file of one's own
    check_run_options([*run, "--tracking", "mlflow"])
    check_run_options(["download", "--tracking", "mlfow"])  # not a run: MONAI's other commands as they are


def test_a_config_file_that_is_not_there_is_refused_with_the_closest_one(tmp_path):
    typo = CONFIGS / "baselines" / "mhead.yaml"
    with pytest.raises(ConfigValueError, match=rf"^--config_file {typo}: no such file \(did you mean "
                                               rf"{CONFIGS / 'baselines' / 'mheads.yaml'}\?\)\.$"):
        check_run_options(["run", "training", "--config_file", f"['{TRAIN_YAML}', '{typo}']"])
    with pytest.raises(ConfigValueError, match=rf"^--config_file {tmp_path / 'x.yaml'}: no such file\.$"):
        check_run_options(["run", "training", "--config_file", f"{TRAIN_YAML},{tmp_path / 'x.yaml'}"])
    with pytest.raises(ConfigValueError, match=rf"^--logging_file {tmp_path / 'log.conf'}: no such file\.$"):
        check_run_options(["run", "training", "--config_file", str(TRAIN_YAML), "--logging_file",
                           str(tmp_path / "log.conf")])  # fmt: skip
    check_run_options(["run", "training", "--config_file", str(TRAIN_YAML), "--logging_file", "false"])


def _bundle(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai_probunet.bundle", "run", *args]


@pytest.mark.slow
def test_the_command_refuses_a_mistyped_tracking_option_in_one_line(tmp_path):
    """`--tracking mlfow`: MONAI reads it as a settings file before any config runs (``ValueError: unknown file
    input``, a traceback); here one line and exit status 2, nothing written."""
    cmd = _bundle("training", "--config_file", str(TRAIN_YAML), "--tracking", "mlfow", "--ckpt_dir",
                  str(tmp_path / "models"))  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    said = "error: --tracking mlfow: expected mlflow, or a tracking settings file (.json, .yaml, .yml) (did you mean "
    assert proc.stderr.strip().splitlines() == [said + "mlflow?)."], proc.stderr[-2000:]
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_ctrl_c_while_monai_is_imported_is_one_line(tmp_path):
    """Ctrl-C during the seconds the command imports MONAI (torch): one line, exit status 130, nothing written.
    ``-X importtime`` tells when torch is being imported (its lines are left out of what is compared)."""
    cmd = [sys.executable, "-X", "importtime", *_bundle("training", "--config_file", str(TRAIN_YAML), "--ckpt_dir",
                                                        str(tmp_path / "models"))[1:]]  # fmt: skip
    proc = terminal_job(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                        env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in proc.stderr:  # type: ignore[union-attr]
        lines.append(line)
        if "torch" in line:  # a module of torch imported: MONAI's import is under way, torch's far from done
            break
    os.killpg(proc.pid, signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    said = [x for x in "".join(lines).splitlines() + rest.splitlines() if not x.startswith("import time:")]
    assert proc.returncode == 130, said[-30:]
    assert said == ["interrupted by Ctrl-C."]
    assert not (tmp_path / "models").exists()
