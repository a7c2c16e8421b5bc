"""The MONAI Label app (apps/monailabel) served by a real `monailabel start_server` from the label venv.

Skipped unless ``.venv-label/bin/monailabel`` exists (build it with ``bash apps/monailabel/setup_venv.sh``). The
server runs on 127.0.0.1 on a free port with a temporary studies folder and a tiny hand-set ProbUNet checkpoint made
here; it is stopped (its own process group) at the end. The request-parameter parser is also unit-tested without
the venv.
"""

from __future__ import annotations

import email.parser
import email.policy
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "monailabel"
VENV = REPO / ".venv-label"
MONAILABEL = VENV / "bin" / "monailabel"
STARTUP_TIMEOUT = 180  # seconds
S = 16


def _load_params_module():
    spec = importlib.util.spec_from_file_location("probunet_params", APP / "lib" / "infers" / "params.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ no venv needed


def test_parse_params():
    m = _load_params_module()
    p = m.parse_params({"center": [1, 2.5], "num_samples": "8", "seed": 3, "world": "true", "frame": "lps"})
    assert p == m.InferParams(center=[1.0, 2.5], world=True, frame="LPS", num_samples=8, seed=3, hypotheses=False)
    assert m.parse_params({"foreground": [[4, 5, 6], [1, 1, 1]]}).center == [4.0, 5.0, 6.0]
    assert m.parse_params({}).center is None
    for bad, match in [
        ({"center": "abc"}, "center"), ({"center": [1]}, "center"), ({"center": [1, float("nan")]}, "center"),
        ({"center": [True, 1]}, "center"), ({"num_samples": 0}, "num_samples"), ({"num_samples": 1.5}, "num_samples"),
        ({"seed": "x"}, "seed"), ({"world": "maybe"}, "world"), ({"frame": "XYZ"}, "frame"),
        ({"hypotheses": 2}, "hypotheses"), ({"foreground": [1, 2]}, "foreground"),
    ]:
        with pytest.raises(ValueError, match=match):
            m.parse_params(bad)


# ------------------------------------------------------------------------------------------------ server

pytestmark_server = pytest.mark.skipif(
    not MONAILABEL.exists(),
    reason=f"{MONAILABEL} does not exist: build the MONAI Label venv with `bash apps/monailabel/setup_venv.sh`",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Start `monailabel start_server` from the venv; yield (base_url, paths); stop it afterwards."""
    if not MONAILABEL.exists():
        pytest.skip(f"{MONAILABEL} does not exist: build it with `bash apps/monailabel/setup_venv.sh`")
    requests = pytest.importorskip("requests")
    from tests.test_inference import CHANNELS, LATENT, coin_flip_probunet

    root = tmp_path_factory.mktemp("monailabel")
    studies = root / "studies"
    studies.mkdir()
    img = np.full((64, 64), -850.0, np.float32)
    img[24:40, 26:38] = 30.0
    affine = np.array([[0.5, 0, 0, -10.0], [0, 0.5, 0, 5.0], [0, 0, 1.0, 2.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(img, affine), str(studies / "case1.nii.gz"))
    nan = img.copy()
    nan[3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), str(studies / "nanimage.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 4, 2), np.float32), np.eye(4)), str(studies / "twochannel.nii.gz"))
    (studies / "corrupt.nii.gz").write_bytes(b"this is not a nifti file" * 8)
    net = coin_flip_probunet()
    model = root / "model.pt"
    torch.save(net.state_dict(), model)
    config = root / "net.yaml"
    config.write_text(
        "hu_window: [-1000.0, 400.0]\nnetwork_def:\n  _target_: monai_probunet.networks.ProbUNet\n"
        f"  spatial_dims: 2\n  channels: {CHANNELS}\n  latent_dim: {LATENT}\n"
    )
    # a copy of the app: `start_server` creates logs/, model/ and bin/ inside the app folder
    app = root / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__", "*.sh"))
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VENV),
        "OMP_NUM_THREADS": "1",
        "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONHOME", None)
    log = open(root / "server.log", "wb")  # noqa: SIM115 -- closed in the teardown
    cmd = [str(MONAILABEL), "start_server", "--app", str(app), "--studies", str(studies), "--conf", "zoo_source",
           "local", "--conf", "model_path", str(model), "--conf", "network_config", str(config),
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(root), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"monailabel exited with {proc.returncode}:\n{(root / 'server.log').read_text()[-4000:]}")
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"monailabel did not answer within {STARTUP_TIMEOUT} s:\n"
                            f"{(root / 'server.log').read_text()[-4000:]}")
            time.sleep(1.0)
        yield url, {"studies": studies, "affine": affine, "image": img, "net": net, "root": root}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)
        log.close()


def _multipart(response) -> dict[str, bytes]:
    """Parts of a multipart/form-data answer (``output=all``): name -> payload bytes."""
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    parts = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = part.get_payload(decode=True)
    return parts


def _post(url: str, model: str = "probunet", params: dict | str | None = None, output: str = "json", **query):
    import requests

    q = {"output": output, **query}
    data = {"params": params if isinstance(params, str) else json.dumps(params or {})}
    return requests.post(f"{url}/infer/{model}", params=q, data=data, timeout=120)


@pytestmark_server
def test_info(server):
    import requests

    url, _ = server
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert "probunet" in info["models"]
    assert info["models"]["probunet"]["labels"] == {"lesion": 1}


@pytestmark_server
def test_infer_label_and_json(server, tmp_path):
    from monai_probunet.inference import predict_hypotheses

    url, ctx = server
    r = _post(url, params={"center": [32, 30], "num_samples": S, "seed": 0}, output="all", image="case1")
    assert r.status_code == 200, r.text
    parts = _multipart(r)
    result = json.loads(parts["params"])
    for key in ("presence_probability", "presence_count", "ambiguous", "ambiguity_rule", "variants", "areas_mm2",
                "area_mm2_spread", "center_voxel", "label_content"):
        assert key in result, key
    assert result["label_content"] == "most_frequent_variant" and result["num_samples"] == S
    assert 0.0 <= result["presence_probability"] <= 1.0 and isinstance(result["ambiguous"], bool)
    freqs = [v["frequency"] for v in result["variants"]]
    assert freqs == sorted(freqs, reverse=True) and sum(freqs) == pytest.approx(1.0)
    (tmp_path / "label.nii.gz").write_bytes(parts["image"])
    label = nib.load(str(tmp_path / "label.nii.gz"))
    assert label.shape == (64, 64, 1)
    np.testing.assert_allclose(label.affine, ctx["affine"], atol=1e-5)
    # the same hypotheses as the library in this process (same seed, same weights)
    h = predict_hypotheses(ctx["studies"] / "case1.nii.gz", (32, 30), ctx["net"], num_samples=S, seed=0)
    assert result["presence_count"] == h.presence_count
    assert [v["members"] for v in result["variants"]] == [list(v.members) for v in h.variants]
    np.testing.assert_array_equal(np.asarray(label.dataobj)[..., 0], h.most_frequent_label)


@pytestmark_server
def test_infer_all_hypotheses(server):
    url, _ = server
    r = _post(url, params={"center": [32, 30], "num_samples": 4, "hypotheses": True}, output="image", image="case1")
    assert r.status_code == 200, r.text
    header = r.content.split(b"\n\n", 1)[0]
    assert b"NRRD" in header[:8] and b"Segment3_Name:=hypothesis_3" in header and b"sizes: 4 64 64 1" in header


BAD_REQUESTS = [
    ("unknown image", {"image": "no_such_image"}, {}, 404),
    ("unknown model", {"image": "case1", "model": "nomodel"}, {}, 404),
    ("centre not a list", {"image": "case1"}, {"center": "abc"}, 400),
    ("centre too short", {"image": "case1"}, {"center": [1]}, 400),
    ("centre too long", {"image": "case1"}, {"center": [1, 2, 3, 4]}, 400),
    ("centre not numbers", {"image": "case1"}, {"center": ["a", "b"]}, 400),
    ("centre far outside", {"image": "case1"}, {"center": [1e9, 5]}, 400),
    ("centre negative", {"image": "case1"}, {"center": [-10, 5]}, 400),
    ("3-D centre on a slice", {"image": "case1"}, {"center": [1, 2, 3]}, 400),
    ("world centre off the plane", {"image": "case1"}, {"center": [0, 0, 500], "world": True}, 400),
    ("bad frame", {"image": "case1"}, {"frame": "XYZ"}, 400),
    ("bad world flag", {"image": "case1"}, {"world": "maybe"}, 400),
    ("zero samples", {"image": "case1"}, {"num_samples": 0}, 400),
    ("too many samples", {"image": "case1"}, {"num_samples": 100000}, 400),
    ("samples not a number", {"image": "case1"}, {"num_samples": "many"}, 400),
    ("negative seed", {"image": "case1"}, {"seed": -1}, 400),
    ("seed not a number", {"image": "case1"}, {"seed": "x"}, 400),
    ("bad hypotheses flag", {"image": "case1"}, {"hypotheses": "perhaps"}, 400),
    ("malformed foreground", {"image": "case1"}, {"foreground": "x"}, 400),
    ("corrupt file", {"image": "corrupt"}, {}, 422),
    ("NaN voxels", {"image": "nanimage"}, {}, 422),
    ("two channels", {"image": "twochannel"}, {}, 422),
]


@pytestmark_server
def test_bad_requests_then_good(server):
    import requests

    url, _ = server
    assert len(BAD_REQUESTS) >= 20
    answers = []
    for name, query, params, status in BAD_REQUESTS:
        q = dict(query)
        model = q.pop("model", "probunet")
        r = _post(url, model=model, params=params, **q)
        detail = r.json().get("detail", "") if r.headers.get("content-type", "").startswith("application/json") else ""
        answers.append((name, r.status_code, detail))
    # an uploaded corrupt file
    r = requests.post(
        f"{url}/infer/probunet", params={"output": "json"}, data={"params": "{}"},
        files={"file": ("upload.nii.gz", io.BytesIO(b"garbage" * 20), "application/octet-stream")}, timeout=120,
    )
    answers.append(("uploaded corrupt file", r.status_code, r.json().get("detail", "")))
    expected = [s for *_, s in BAD_REQUESTS] + [422]
    for (name, status, detail), want in zip(answers, expected):
        assert status == want, f"{name}: {status} {detail}"
        assert 400 <= status < 500 and len(detail) > 10, f"{name}: {status} {detail!r}"
    # the server still answers a good request
    r = _post(url, params={"center": [32, 30]}, image="case1")
    assert r.status_code == 200 and "presence_probability" in r.json()
