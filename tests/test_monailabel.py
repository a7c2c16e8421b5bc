"""The MONAI Label app (apps/monailabel) served by a real `monailabel start_server` from the label venv.

Skipped unless ``.venv-label/bin/monailabel`` exists (build it with ``bash apps/monailabel/setup_venv.sh``). The
server runs on 127.0.0.1 on a free port with a temporary studies folder and a tiny hand-set ProbUNet checkpoint made
here; it is stopped (its own process group) at the end. The request-parameter parser is also unit-tested without
the venv.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import importlib.util
import io
import json
import os
import shutil
import socket
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.conftest import background_server

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "monailabel"
VENV = Path(os.environ.get("MONAILABEL_VENV") or REPO / ".venv-label")  # the MONAI Label venv to test
MONAILABEL = VENV / "bin" / "monailabel"
STARTUP_TIMEOUT = 180  # seconds
S = 16


def _load_app_module(name: str, folder: str = "infers"):
    """A module of apps/monailabel/lib/<folder> that imports no MONAI Label (runs in the main venv)."""
    spec = importlib.util.spec_from_file_location(f"probunet_{name}", APP / "lib" / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ no venv needed


def test_parse_params():
    m = _load_app_module("params")
    p = m.parse_params({"center": [1, 2.5], "num_samples": "8", "seed": 3, "world": "true", "frame": "lps"})
    assert p == m.InferParams(center=[1.0, 2.5], from_click=False, world=True, frame="LPS", num_samples=8, seed=3,
                              hypotheses=False)
    # 3D Slicer's click format: the newest foreground point on the clicked slice is the centre; background is
    # checked, not used
    p = m.parse_params({"foreground": [[4, 5, 6], [1, 1, 1]], "background": [[9, 9, 9]], "label": "lesion",
                        "slice": 6, "client_id": "user-xyz", "result_extension": ".nrrd", "result_dtype": "uint8"})
    assert p.center == [4.0, 5.0, 6.0] and p.from_click and p.center_source == "foreground[0]"
    # a second lesion clicked on the same slice: the new click, not the first lesion again
    assert m.parse_params({"foreground": [[60, 94, 5], [20, 110, 5]], "slice": 5}).center == [20.0, 110.0, 5.0]
    # on slice 0 the module sends the points of every slice: the newest point on slice 0, not an older one elsewhere
    p = m.parse_params({"foreground": [[60, 94, 5], [56, 64, 0], [7, 7, 3]], "slice": 0})
    assert p.center == [56.0, 64.0, 0.0] and p.center_source == "foreground[1]"
    assert m.parse_params({"foreground": [[1, 2, 3], [4, 5, 6]]}).center == [4.0, 5.0, 6.0]  # no slice: the newest
    assert m.parse_params({"foreground": [[1, 2, 3]], "slice": 9}).center == [1.0, 2.0, 3.0]  # none on it: newest
    assert m.parse_params({"center": [1, 2], "allow_non_ct": "true"}).allow_non_ct
    assert m.parse_params({"center": [7, 8], "foreground": [[4, 5, 6]]}).center == [7.0, 8.0]  # REST centre wins
    for no_point in ({}, {"foreground": []}, {"foreground": [], "background": [[1, 2, 3]]}, {"center": None}):
        with pytest.raises(ValueError, match="click the centre of the lesion"):
            m.parse_params(no_point)
    for bad, match in [
        ({"center": "abc"}, "center"), ({"center": [1]}, "center"), ({"center": [1, float("nan")]}, "center"),
        ({"center": [True, 1]}, "center"), ({"center": [1, 2], "num_samples": 0}, "num_samples"),
        ({"center": [1, 2], "num_samples": 1.5}, "num_samples"), ({"center": [1, 2], "seed": "x"}, "seed"),
        ({"center": [1, 2], "world": "maybe"}, "world"), ({"center": [1, 2], "frame": "XYZ"}, "frame"),
        ({"center": [1, 2], "hypotheses": 2}, "hypotheses"), ({"foreground": [1, 2]}, "foreground"),
        ({"foreground": [[1, 2, 3]], "background": "x"}, "background"), ({"foreground": [["a", 2]]}, "foreground"),
        ({"foreground": [[1, 2, 3]], "slice": "top"}, "slice"), ({"foreground": [[1, 2, 3]], "slice": 2.5}, "slice"),
        ({"center": [1, 2], "allow_non_ct": "perhaps"}, "allow_non_ct"),
    ]:
        with pytest.raises(ValueError, match=match):
            m.parse_params(bad)


def test_presence_rule_fitted_and_fallback():
    m = _load_app_module("label_rule")
    from monai_probunet.metrics.presence import PresenceThreshold

    thr = PresenceThreshold(low=3, high=12, accuracy=0.8, num_samples=16)
    # empty only when the count is at or below `low` (below the ambiguous band low < count < high)
    assert [m.presence_decision(c, 16, thr).show_lesion for c in (0, 3, 4, 11, 12, 16)] == [
        False, False, True, True, True, True]
    rule = m.presence_decision(4, 16, thr).rule
    assert "empty iff count <= 3" in rule and "count = 4 of 16" in rule and "more than half" in rule
    # a threshold fitted on S=16 applied to S=32: the count is rescaled (8/32 -> 4/16: shown; 6/32 -> 3/16: empty)
    assert m.presence_decision(8, 32, thr).show_lesion and not m.presence_decision(6, 32, thr).show_lesion
    assert "rescaled from 8 of 32" in m.presence_decision(8, 32, thr).rule
    # a rule fitted on lesion crops alone (low = 0, as the shipped one): still no label drawn from 1-3 of 16
    # hypotheses (one hypothesis outlining a lesion-free lung vessel would otherwise be the label)
    lesion_only = PresenceThreshold(low=0, high=11, accuracy=0.73, num_samples=16)
    assert [m.presence_decision(c, 16, lesion_only).show_lesion for c in (0, 1, 3, 4, 16)] == [
        False, False, False, True, True]
    rule = m.presence_decision(3, 16, lesion_only).rule
    assert "empty iff count <= 0 or p < 0.25" in rule and "p = 3/16 = 0.188" in rule
    # fallback: empty iff p < 0.25
    assert [m.presence_decision(c, 16, None).show_lesion for c in (0, 3, 4, 16)] == [False, False, True, True]
    assert "fallback" in m.presence_decision(4, 16, None).rule
    with pytest.raises(ValueError, match="count"):
        m.presence_decision(17, 16, None)


def test_consensus_label_majority_of_lesion_hypotheses():
    m = _load_app_module("label_rule")
    labels = np.zeros((6, 8, 8), np.uint8)
    # 3 empty hypotheses, 3 with a lesion: the empty ones do not vote
    labels[3, 2:6, 2:6] = 1
    labels[4, 2:6, 2:5] = 1
    labels[5, 3:7, 2:6] = 1
    want = np.zeros((8, 8), np.uint8)
    want[2:6, 2:6] = 1  # marked by at least 2 of the 3 lesion hypotheses (not by 2 of 6: empty ones do not vote)
    want[2, 5] = 0  # only hypothesis 3 marks it
    np.testing.assert_array_equal(m.consensus_label(labels), want)
    assert m.consensus_label(labels)[3, 3] == 1 and m.consensus_label(labels)[6, 3] == 0
    # disjoint outlines: no majority anywhere -> the given representative (or the best-overlapping one)
    disjoint = np.zeros((3, 8, 8), np.uint8)
    disjoint[0, 0:2, 0:2] = 1
    disjoint[1, 5:8, 5:8] = 1
    np.testing.assert_array_equal(m.consensus_label(disjoint, fallback=1), disjoint[1])
    assert m.consensus_label(disjoint).sum() in (4, 9)
    assert not m.consensus_label(np.zeros((4, 5, 5), np.uint8)).any()


def test_segment_names():
    m = _load_app_module("label_rule")
    assert m.label_segment_name(0.625, True, True) == "lesion p=0.62 ambiguous"
    assert m.label_segment_name(0.9375, False, True) == "lesion p=0.94"
    assert m.label_segment_name(0.0625, False, False) == "no lesion p=0.06"
    assert [m.variant_letter(r) for r in (0, 1, 25, 26, 27, 701, 702)] == ["A", "B", "Z", "AA", "AB", "ZZ", "AAA"]

    class V:
        def __init__(self, members, has_lesion):
            self.members, self.has_lesion = members, has_lesion

    names = m.hypothesis_segment_names([V((0, 2, 5), False), V((1, 3), True), V((4,), True)], 6)
    assert names == ["h0 variant A 3/6 no lesion", "h1 variant B 2/6", "h2 variant A 3/6 no lesion",
                     "h3 variant B 2/6", "h4 variant C 1/6", "h5 variant A 3/6 no lesion"]
    assert len(set(names)) == len(names)  # one segment per hypothesis, each name unique
    with pytest.raises(ValueError, match="no variant"):
        m.hypothesis_segment_names([V((0,), True)], 2)


def test_studies_notes_say_why_a_folder_lists_no_image(tmp_path):
    """MONAI Label's local datastore lists only the NIfTI / NRRD files at the studies folder's top: a folder of DICOM
    series, of images one level down, or nothing gets one line saying why Slicer's list is empty; a file as the
    folder is a problem; a folder that lists images, or a DICOMweb URL, gets no note."""
    import pydicom.data

    m = _load_app_module("studies_check", folder=".")
    ext = ["*.nii.gz", "*.nii", "*.nrrd"]
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    for name in ("IM0001", "IM0002"):  # a CD's series: DICOM files without a suffix
        (tmp_path / "cd" / "DICOM" / "SE1").mkdir(parents=True, exist_ok=True)
        shutil.copy(ct, tmp_path / "cd" / "DICOM" / "SE1" / name)
    (tmp_path / "cd" / "README.TXT").write_text("a CD")
    [note] = m.studies_notes(str(tmp_path / "cd"), 0, ext)
    assert "holds 2 DICOM file(s) in 1 folder(s)" in note and "--studies http://127.0.0.1:8042/dicom-web" in note
    (tmp_path / "nested" / "patient1").mkdir(parents=True)
    (tmp_path / "nested" / "patient1" / "ct.nii.gz").write_bytes(b"")
    (tmp_path / "nested" / "labels" / "final").mkdir(parents=True)  # the datastore's own labels: not the user's
    (tmp_path / "nested" / "labels" / "final" / "x.nii.gz").write_bytes(b"")
    [note] = m.studies_notes(str(tmp_path / "nested"), 0, ext)
    assert "1 image file(s) lie in its subfolders, and only those at its top level are served" in note
    (tmp_path / "empty").mkdir()
    [note] = m.studies_notes(str(tmp_path / "empty"), 0, ext)
    assert note.startswith(f"studies folder {tmp_path / 'empty'} holds no image") and "check the path" in note
    assert m.studies_notes(str(tmp_path / "cd"), 3, ext) == []
    assert m.studies_notes("http://pacs/dicom-web", 0, ext) == []
    assert m.studies_problem(str(ct)) == (f"--studies {ct} is a file: give a folder of images (NIfTI or NRRD) or a "
                                          "DICOMweb server's URL (http://HOST:8042/dicom-web).")
    assert m.studies_problem(str(tmp_path / "cd")) is None and m.studies_problem("https://pacs/dicom-web") is None


# ------------------------------------------------------------------------------------------------ server

_skip_without_venv = pytest.mark.skipif(
    not MONAILABEL.exists(),
    reason=f"{MONAILABEL} does not exist: build the MONAI Label venv with `bash apps/monailabel/setup_venv.sh`",
)


def pytestmark_server(test):
    """Server tests: skipped without the label venv; slow (a server start with the model warm-up)."""
    return pytest.mark.slow(_skip_without_venv(test))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict:
    env = {
        **os.environ,
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "VIRTUAL_ENV": str(VENV),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTHONHOME", None)
    return env


@contextlib.contextmanager
def running_server(root: Path, studies: str, conf: dict):
    """`monailabel start_server` on a free loopback port with ``--conf`` pairs; yields (url, log path, seconds to
    the first answer of /info/); stops the server's process group afterwards."""

    # a copy of the app: `start_server` creates logs/, model/ and bin/ inside the app folder
    app = root / "app"
    if not app.exists():
        shutil.copytree(APP, app, ignore=shutil.ignore_patterns("logs", "model", "bin", "__pycache__", "*.sh"))
    port = _free_port()
    (root / "tmp").mkdir(exist_ok=True)  # the server's temporary files, which tests may count
    env = {**server_env(), "MONAI_LABEL_SESSION_PATH": str(root / "sessions"),
           "MONAI_LABEL_DATASTORE_CACHE_PATH": str(root / "dicom_cache"), "TMPDIR": str(root / "tmp"),
           "MONAI_LABEL_DICOMWEB_CACHE_PATH": str(root / "dicom_cache")}  # the DICOMweb datastore reads this one
    log_path = root / f"server_{port}.log"
    cmd = [str(MONAILABEL), "start_server", "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1",
           "--port", str(port)]
    for k, v in {"zoo_source": "local", **conf}.items():
        cmd += ["--conf", k, str(v)]
    url = f"http://127.0.0.1:{port}"
    with background_server(cmd, f"{url}/info/", log_path, STARTUP_TIMEOUT, "monailabel", env=env, cwd=str(root)):
        yield url, log_path


def left_behind(tmp: Path, wait_s: float = 10.0) -> list[str]:
    """The images and labels still in the server's temporary folder ``tmp`` once the answers' own files are gone
    (MONAI Label removes a result file after sending it)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        left = sorted(p.name for p in tmp.iterdir() if p.name.endswith((".nii.gz", ".nii", ".dcm", ".nrrd")))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def write_test_model(root: Path) -> tuple[Path, Path, torch.nn.Module]:
    """The coin-flip ProbUNet of test_inference (every crop pixel is lesion iff z_0 > 0) and its config."""
    from tests.test_inference import CHANNELS, LATENT, coin_flip_probunet

    net = coin_flip_probunet()
    model = root / "model.pt"
    torch.save(net.state_dict(), model)
    config = root / "net.yaml"
    config.write_text(
        "hu_window: [-1000.0, 400.0]\ninfer_spacing: [0.5, 0.5]\ninfer_roi_size: [64, 64]\nnetwork_def:\n"
        f"  _target_: monai_probunet.networks.ProbUNet\n  spatial_dims: 2\n  channels: {CHANNELS}\n"
        f"  latent_dim: {LATENT}\n"
    )
    return model, config, net


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Start `monailabel start_server` from the venv; yield (base_url, paths); stop it afterwards."""
    if not MONAILABEL.exists():
        pytest.skip(f"{MONAILABEL} does not exist: build it with `bash apps/monailabel/setup_venv.sh`")
    pytest.importorskip("requests")

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
    soft = np.full((64, 64), 40.0, np.float32)  # a soft-tissue crop: no air, lung or fat
    soft[24:40, 26:38] = 70.0
    nib.save(nib.Nifti1Image(soft, affine), str(studies / "softtissue.nii.gz"))
    model, config, net = write_test_model(root)
    with running_server(root, str(studies), {"model_path": model, "network_config": config}) as (url, log):
        yield url, {"studies": studies, "affine": affine, "image": img, "net": net, "root": root, "log": log,
                    "model": model, "config": config}


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


TASK_FLOW_SCRIPT = r"""
import json, sys, warnings
sys.path.insert(0, sys.argv[1])
import numpy as np
from monai.bundle import ConfigParser
from monailabel.tasks.infer.basic_infer import CallBackTypes
from lib.infers.probunet import ProbUNetInfer
from lib.infers.request_errors import ProbUNetRequestError
from monai_probunet.inference_transforms import run_hypotheses

model, config, train_yaml, infer_yaml, bundle, image, corrupt = sys.argv[2:9]
task = ProbUNetInfer(path=model, config_file=config)
parser = ConfigParser()
parser.read_config([train_yaml, infer_yaml])
parser.update({"bundle_root": bundle, "ckpt_path": model, "infer_spacing": [0.5, 0.5], "infer_roi_size": [64, 64],
               "infer_num_samples": 6, "infer_seed": 2})
pre, inferer, post = (parser.get_parsed_content(k) for k in ("preprocessing", "inferer", "postprocessing"))
request = {"image": image, "center": [32, 30], "num_samples": 6, "seed": 2, "logging": "WARNING"}
data = {**task.check_request(request), "device": "cpu"}
names = lambda ts: [type(t).__name__ for t in ts]
out = {"pre": names(task.pre_transforms(data)), "post": names(task.post_transforms(data)),
       "bundle_pre": names(pre.transforms), "bundle_post": names(post.transforms),
       "inferer": [type(task.inferer(data)).__name__, task.inferer(data).num_samples, task.inferer(data).seed]}
stages = {}
def seen(name, keys):
    def cb(d):
        stages[name] = {k: list(d[k].shape) if hasattr(d.get(k), "shape") else d.get(k) is not None for k in keys}
        return d
    return cb
callbacks = {CallBackTypes.PRE_TRANSFORMS: seen("pre", ["model_input", "pred"]),
             CallBackTypes.INFERER: seen("inferer", ["pred"]),
             CallBackTypes.POST_TRANSFORMS: seen("post", ["hypotheses", "pred"])}
_, answer = task({**request, "hypotheses": True, "skip_writer": True}, callbacks)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ref = run_hypotheses({"image": image, "center": [32, 30]}, task._model("cpu")[0], pre, inferer, post)
got = answer["hypotheses"]
out.update(stages=stages, same_labels=bool(np.array_equal(answer["pred"].array[..., 0], ref.labels)),
           same_report=got.to_report() == ref.to_report() and answer["result"]["presence_count"] == ref.presence_count)
statuses = {}
for name, req in {"no click": {"image": image}, "missing": {"image": image + ".gone", "center": [1, 2]},
                  "corrupt": {"image": corrupt, "center": [1, 2]}, "outside": {"image": image, "center": [900, 2]},
                  "three_d on a slice": {"image": image, "center": [1, 2], "mode": "3d"}}.items():
    try:
        task({**req, "logging": "WARNING"})
        statuses[name] = 200
    except ProbUNetRequestError as e:
        statuses[name] = e.status
out["statuses"] = statuses
print("RESULT " + json.dumps(out))
"""


@pytestmark_server
def test_task_runs_the_bundle_pieces_in_monai_labels_flow(tmp_path):
    """The task's pre_transforms / inferer / post_transforms are inference.yaml's preprocessing / inferer /
    postprocessing, MONAI Label's own flow runs them (its stage callbacks see the model input, the logits, the
    hypotheses), the answer equals the library run of those pieces, and request errors keep their statuses."""
    import subprocess

    model, config, _ = write_test_model(tmp_path)
    img = np.full((64, 64), -850.0, np.float32)
    img[24:40, 26:38] = 30.0
    image = tmp_path / "case1.nii.gz"
    nib.save(nib.Nifti1Image(img, np.diag([0.5, 0.5, 1.0, 1.0])), str(image))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not a nifti" * 9)
    args = [str(APP), str(model), str(config), str(REPO / "bundle" / "configs" / "train.yaml"),
            str(REPO / "bundle" / "configs" / "inference.yaml"), str(REPO / "bundle"), str(image), str(corrupt)]
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", TASK_FLOW_SCRIPT, *args], capture_output=True, text=True,
                       timeout=600, env=server_env(), cwd=str(tmp_path), check=False)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["pre"] == ["RequestCased", *out["bundle_pre"]] and "ModelGridd" in out["bundle_pre"]
    assert out["post"] == [*out["bundle_post"], "AnswerFromHypothesesd"] and "InvertModelGridd" in out["bundle_post"]
    assert out["inferer"] == ["HypothesesInferer", 6, 2]
    assert out["stages"]["pre"] == {"model_input": [1, 64, 64], "pred": False}
    assert out["stages"]["inferer"]["pred"] == [1, 6, 2, 64, 64]
    assert out["stages"]["post"] == {"hypotheses": True, "pred": [6, 64, 64, 1]}
    assert out["same_labels"] and out["same_report"]
    assert out["statuses"] == {"no click": 400, "missing": 404, "corrupt": 422, "outside": 400,
                               "three_d on a slice": 400}


@pytestmark_server
def test_info(server):
    import requests

    url, _ = server
    info = requests.get(f"{url}/info/", timeout=30).json()
    m = info["models"]["probunet"]
    assert m["labels"] == {"lesion": 1} and m["model_file_exists"] is True
    assert m["type"] == "deepgrow" and m["dimension"] == 2  # a click model: Slicer sends foreground points


def expected_label(h) -> tuple[np.ndarray, str]:
    """The label and segment name the app must return for library hypotheses ``h`` (the presence rule)."""
    rule = _load_app_module("label_rule")
    decision = rule.presence_decision(h.presence_count, h.num_samples, h.threshold)
    if decision.show_lesion:
        lesion = [v for v in h.variants if v.has_lesion]
        label = rule.consensus_label(h.labels, fallback=lesion[0].representative)
    else:
        label = np.zeros(h.spatial_shape, np.uint8)
    return label, rule.label_segment_name(h.presence_probability, h.ambiguous, decision.show_lesion)


@pytestmark_server
def test_infer_label_and_json(server, tmp_path):
    from monai_probunet.inference import predict_hypotheses

    url, ctx = server
    r = _post(url, params={"center": [32, 30], "num_samples": S, "seed": 0}, output="all", image="case1")
    assert r.status_code == 200, r.text
    parts = _multipart(r)
    result = json.loads(parts["params"])
    for key in ("presence_probability", "presence_count", "ambiguous", "ambiguity_rule", "variants", "areas_mm2",
                "area_mm2_spread", "center_voxel", "label_content", "label_rule", "label_names", "segments"):
        assert key in result, key
    assert result["label_content"] == "presence_rule_consensus" and result["num_samples"] == S
    assert result["center_source"] == "center"
    assert 0.0 <= result["presence_probability"] <= 1.0 and isinstance(result["ambiguous"], bool)
    freqs = [v["frequency"] for v in result["variants"]]
    assert freqs == sorted(freqs, reverse=True) and sum(freqs) == pytest.approx(1.0)
    (tmp_path / "label.nii.gz").write_bytes(parts["image"])
    label = nib.load(str(tmp_path / "label.nii.gz"))
    assert label.shape == (64, 64, 1)
    np.testing.assert_allclose(label.affine, ctx["affine"], atol=1e-5)
    # the same hypotheses as the library in this process (same seed, same weights), and the presence rule
    h = predict_hypotheses(ctx["studies"] / "case1.nii.gz", (32, 30), ctx["net"], num_samples=S, seed=0,
                           spacing=0.5, roi_size=64)
    assert result["presence_count"] == h.presence_count
    assert [v["members"] for v in result["variants"]] == [list(v.members) for v in h.variants]
    want, name = expected_label(h)
    np.testing.assert_array_equal(np.asarray(label.dataobj)[..., 0], want)
    assert result["label_names"] == {name: 1} and result["label_voxels"] == int(want.sum())
    assert result["label_shows_lesion"] == bool(want.any())
    # the coin-flip model: some hypotheses show the whole crop, some nothing; the label is never silently empty
    assert 0 < h.presence_count < S and result["label_shows_lesion"] and want.sum() > 0


@pytestmark_server
def test_infer_all_hypotheses(server):
    url, _ = server
    r = _post(url, params={"center": [32, 30], "num_samples": 4, "hypotheses": True}, output="all", image="case1")
    assert r.status_code == 200, r.text
    parts = _multipart(r)
    result = json.loads(parts["params"])
    header = parts["image"].split(b"\n\n", 1)[0].decode()
    assert header.startswith("NRRD") and "sizes: 4 64 64 1" in header and "kinds: list domain domain domain" in header
    names = {v: k for k, v in result["label_names"].items()}
    assert sorted(names) == [1, 2, 3, 4]
    for s in range(4):
        count = next(len(v["members"]) for v in result["variants"] if s in v["members"])
        assert names[s + 1].startswith(f"h{s} variant ") and f" {count}/4" in names[s + 1]
        assert f"Segment{s}_Name:={names[s + 1]}" in header and f"Segment{s}_Layer:={s}" in header


C = {"center": [32, 30]}
BAD_REQUESTS = [
    ("unknown image", {"image": "no_such_image"}, C, 404),
    ("unknown model", {"image": "case1", "model": "nomodel"}, C, 404),
    ("no lesion point", {"image": "case1"}, {}, 400),
    ("empty click list", {"image": "case1"}, {"foreground": [], "background": [[3, 3, 0]]}, 400),
    ("centre not a list", {"image": "case1"}, {"center": "abc"}, 400),
    ("centre too short", {"image": "case1"}, {"center": [1]}, 400),
    ("centre too long", {"image": "case1"}, {"center": [1, 2, 3, 4]}, 400),
    ("centre not numbers", {"image": "case1"}, {"center": ["a", "b"]}, 400),
    ("centre far outside", {"image": "case1"}, {"center": [1e9, 5]}, 400),
    ("centre negative", {"image": "case1"}, {"center": [-10, 5]}, 400),
    ("3-D centre on a slice", {"image": "case1"}, {"center": [1, 2, 3]}, 400),
    ("click off the single slice", {"image": "case1"}, {"foreground": [[30, 30, 4]]}, 400),
    ("click outside the image", {"image": "case1"}, {"foreground": [[500, 30, 0]]}, 400),
    ("world centre off the plane", {"image": "case1"}, {"center": [0, 0, 500], "world": True}, 400),
    ("bad frame", {"image": "case1"}, {**C, "frame": "XYZ"}, 400),
    ("bad world flag", {"image": "case1"}, {**C, "world": "maybe"}, 400),
    ("zero samples", {"image": "case1"}, {**C, "num_samples": 0}, 400),
    ("too many samples", {"image": "case1"}, {**C, "num_samples": 100000}, 400),
    ("samples not a number", {"image": "case1"}, {**C, "num_samples": "many"}, 400),
    ("negative seed", {"image": "case1"}, {**C, "seed": -1}, 400),
    ("seed not a number", {"image": "case1"}, {**C, "seed": "x"}, 400),
    ("bad hypotheses flag", {"image": "case1"}, {**C, "hypotheses": "perhaps"}, 400),
    ("malformed foreground", {"image": "case1"}, {"foreground": "x"}, 400),
    ("params not JSON", {"image": "case1"}, "{center: [32, 30]", 400),
    ("params a JSON list", {"image": "case1"}, "[[32, 30]]", 400),
    ("params JSON null", {"image": "case1"}, "null", 400),
    ("empty image id", {"image": ""}, C, 400),
    ("blank image id", {"image": "  "}, C, 400),
    ("corrupt file", {"image": "corrupt"}, C, 422),
    ("NaN voxels", {"image": "nanimage"}, C, 422),
    ("two channels", {"image": "twochannel"}, C, 422),
    ("not plausibly CT", {"image": "softtissue"}, C, 422),
    ("bad allow_non_ct flag", {"image": "softtissue"}, {**C, "allow_non_ct": "perhaps"}, 400),
    ("unknown device", {"image": "case1"}, {**C, "device": "banana"}, 400),
    ("device not a name", {"image": "case1"}, {**C, "device": 5}, 400),
    ("result_dtype not a type", {"image": "case1"}, {**C, "result_dtype": "banana"}, 400),
    ("result_dtype not integer", {"image": "case1"}, {**C, "result_dtype": "float32"}, 400),
    ("slice not an integer", {"image": "case1"}, {"foreground": [[32, 30, 0]], "slice": "top"}, 400),
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
        f"{url}/infer/probunet", params={"output": "json"}, data={"params": json.dumps(C)},
        files={"file": ("upload.nii.gz", io.BytesIO(b"garbage" * 20), "application/octet-stream")}, timeout=120,
    )
    answers.append(("uploaded corrupt file", r.status_code, r.json().get("detail", "")))
    assert not left_behind(server[1]["root"] / "tmp")  # the refused upload is not left in the temporary folder
    expected = [s for *_, s in BAD_REQUESTS] + [422]
    for (name, status, detail), want in zip(answers, expected):
        assert status == want, f"{name}: {status} {detail}"
        assert 400 <= status < 500 and len(detail) > 10, f"{name}: {status} {detail!r}"
    # the server still answers a good request
    r = _post(url, params={"center": [32, 30]}, image="case1")
    assert r.status_code == 200 and "presence_probability" in r.json()
    # the refusal of an image that is not plausibly CT names the request's switch, and the switch works
    assert "allow_non_ct" in {n: d for n, _, d in answers}["not plausibly CT"]
    assert {n: d for n, _, d in answers}["click outside the image"].startswith(
        "foreground point [500.0, 30.0, 0.0] lies outside the image (64 x 64 voxels)")
    r = _post(url, params={"center": [32, 30], "allow_non_ct": True}, image="softtissue")
    assert r.status_code == 200 and "presence_probability" in r.json()
