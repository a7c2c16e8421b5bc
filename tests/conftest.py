from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"
#: sha256 of the shipped model's weights (``bundle/models/model.pt``); the README's quickstart retrains it in place
SHIPPED_WEIGHTS = "c94a44bdc4afa3da217867e17a1a20bf2bf400fe02e0055f89fba52b6eed8fe5"


def is_shipped_model(path: Path) -> bool:
    """Whether ``path`` holds the shipped weights (not weights retrained in place by the README's quickstart):
    assertions about what the shipped model finds hold only for it."""
    from monai_probunet.model_loading import weights_sha256

    return weights_sha256(path) == SHIPPED_WEIGHTS


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory) -> Path:
    """A small ``shapes`` dataset (24 patients x 2 images of 32 x 32), generated once per test session."""
    from monai_probunet.data import prepare_dataset

    root = tmp_path_factory.mktemp("data") / "shapes"
    return Path(prepare_dataset("shapes", root, seed=3, num_patients=24, images_per_patient=2, image_size=32))


def train_yaml_parser(*overrides: str, **values: object):
    """``train.yaml`` merged with ``overrides`` (files of ``bundle/configs``), on the CPU, with ``values`` set."""
    from monai.bundle import ConfigParser

    files = [str(TRAIN_YAML), *(str(TRAIN_YAML.parent / f) for f in overrides)]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    parser.update({"device": "$torch.device('cpu')", **values})
    return parser


def train_yaml_network(*overrides: str, **values: object):
    """The network that :func:`train_yaml_parser`'s ``network_def`` builds (e.g. ``channels=[8, 16, 32]``)."""
    return train_yaml_parser(*overrides, **values).get_parsed_content("network_def")


def run_bundle(*args: str, config_file: str | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run training`` in a subprocess from a neutral working directory."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_file or str(TRAIN_YAML)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        cmd + list(args), capture_output=True, text=True, timeout=timeout, cwd="/", env=env, check=False
    )


def terminal_job(cmd: list[str], **popen: object) -> subprocess.Popen:
    """``cmd`` started as a terminal's foreground job that Ctrl-C can reach: in its own process group (send SIGINT
    with ``os.killpg(proc.pid, signal.SIGINT)``) and with SIGINT at its default, also where the tests themselves run
    in the background of a shell, which starts them with SIGINT ignored (Python then keeps it ignored: no Ctrl-C).

    Args:
        cmd: the command.
        popen: further ``subprocess.Popen`` arguments (``stdout``, ``stderr``, ``text``, ``cwd``, ``env``, ...).
    """
    return subprocess.Popen(cmd, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)  # noqa: PLW1509


@contextlib.contextmanager
def background_server(cmd: list[str], probe_url: str, log_path: Path, timeout: float, name: str,
                      probe_auth: tuple[str, str] | None = None, **popen_kwargs):
    """Start ``cmd`` in its own process group (output to ``log_path``), wait until ``probe_url`` answers 200 (asked
    with ``probe_auth``'s user and password where given; fail the test if the process exits or ``timeout`` seconds
    pass), yield the process, and stop its group afterwards."""
    import requests

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen_kwargs)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
                try:
                    if requests.get(probe_url, timeout=5, auth=probe_auth).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{name} did not answer within {timeout} s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.3)
            yield proc
        finally:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=wait)
                    break
                except ProcessLookupError:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    continue


def make_ct_series(out: Path, **kwargs: object) -> list[Path]:
    """``apps/monailabel/orthanc/make_ct_series.py``'s ``make_series``: a CT series with real DICOM geometry and a
    lesion (its files in slice order)."""
    sys.path.insert(0, str(REPO / "apps" / "monailabel" / "orthanc"))
    try:
        from make_ct_series import make_series
    finally:
        sys.path.pop(0)
    return make_series(out, **kwargs)
