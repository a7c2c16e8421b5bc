"""Several raters -> export -> training -> a better model in use, through a real MONAI Label server.

A real `monailabel start_server` (label venv) serves a studies folder of 32 x 32 CT-like slices with a bright disc;
three raters submit different outlines of each (the disc shrunk, as is, grown) through ``PUT /datastore/label`` as
3D Slicer's Submit does. ``POST /train/probunet`` exports them, runs the bundle's training on the export (a small
network: channels [8, 16, 32]) and swaps the new model in only if its validation GED is lower. The inter-rater view
``probunet_raters`` is checked against the library on the same model file.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.test_monailabel import MONAILABEL, REPO, _multipart, pytestmark_server, running_server

S = 32
AFFINE = np.array([[1.0, 0, 0, -16.0], [0, 1.0, 0, -16.0], [0, 0, 1.0, 0.0], [0, 0, 0, 1]])
RATERS = {"alice": 0.75, "bob": 1.0, "carol": 1.3}  # each rater's outline: the disc's radius times this
NUM_CASES = 10
TINY_NET = """channels: [8, 16, 32]
fcomb_channels: 16
latent_dim: 2
batch_size: 2
infer_spacing: [1.0, 1.0]
infer_roi_size: [32, 32]
# the untrained model in use answers 50 % per pixel (the paper's initialisation), which a few epochs on the raters'
# discs beat; started at the 1 % lesion rate it would already predict nothing, as a dozen iterations on two images
# also do, and the two would tie
foreground_prior: null
"""


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _cases() -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """``{image id: (image, {rater: mask})}``; ``case10`` is left for nobody to outline."""
    rng = np.random.default_rng(7)
    out = {}
    for i in range(NUM_CASES + 1):
        cy, cx = rng.integers(12, 20, 2)
        r = rng.uniform(6, 9)
        img = (-850.0 + 15 * rng.standard_normal((S, S))).astype(np.float32)
        img[_disc(cy, cx, r) > 0] = 30.0
        out[f"case{i}"] = (img, {name: _disc(cy, cx, r * f) for name, f in RATERS.items()})
    return out


def submit(url: str, image: str, mask: np.ndarray, rater: str):
    """PUT /datastore/label as 3D Slicer's Submit Label does (its Client/User-ID arrives as ``client_id``)."""
    import requests

    files = {"label": ("label.nii.gz", gzip.compress(nib.Nifti1Image(mask, AFFINE).to_bytes()),
                       "application/octet-stream")}
    params = {"client_id": rater, "label_info": [{"name": "lesion", "idx": 1}]}
    return requests.put(f"{url}/datastore/label", params={"image": image}, files=files,
                        data={"params": json.dumps(params)}, timeout=60)


def train(url: str, params: dict) -> dict:
    """POST /train/probunet and poll GET /train/ until the task ends (its epochs are bounded, so it does); returns
    the task's status record."""
    import requests

    r = requests.post(f"{url}/train/probunet", json=params, timeout=60)
    assert r.status_code == 200, r.text
    task_id = r.json()["id"]
    while True:
        status = requests.get(f"{url}/train/", timeout=30).json()
        assert status["id"] == task_id
        if status["status"] not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(1.0)


def _tiny_model(root: Path) -> tuple[list[str], Path, dict[str, Any]]:
    """An untrained tiny network in ``root/models/model.pt``: its configs, the model file, the server's ``--conf``."""
    (root / "tiny.yaml").write_text(TINY_NET)
    configs = [str(REPO / "bundle" / "configs" / "train.yaml"), str(root / "tiny.yaml")]
    model = root / "models" / "model.pt"
    model.parent.mkdir()
    _untrained_model(model, configs)
    return configs, model, {"model_path": model, "network_config": ",".join(configs), "warmup": "false"}


def _untrained_model(path: Path, config_files: list[str]) -> None:
    """The network of the config, freshly initialised (seed 0), never trained: the model in use at the start."""
    from monai.bundle import ConfigParser

    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(config_files)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)


@pytest.fixture(scope="module")
def train_server(tmp_path_factory):
    """A server on 11 slices, the untrained model in use; one rated image, then 3 raters on case0..case9."""
    if not MONAILABEL.exists():
        pytest.skip(f"{MONAILABEL} does not exist: build it with `bash apps/monailabel/setup_venv.sh`")
    pytest.importorskip("requests")
    root = tmp_path_factory.mktemp("train")
    studies = root / "studies"
    studies.mkdir()
    cases = _cases()
    for cid, (img, _) in cases.items():
        nib.save(nib.Nifti1Image(img, AFFINE), str(studies / f"{cid}.nii.gz"))
    big = np.full((S + 16, S + 16), -850.0, np.float32)  # a slice of another size than the others
    nib.save(nib.Nifti1Image(big, AFFINE), str(studies / "big.nii.gz"))
    configs, model, conf = _tiny_model(root)
    with running_server(root, str(studies), conf) as (url, log):
        ctx = {"root": root, "studies": studies, "cases": cases, "model": model, "configs": configs, "log": log,
               "app": root / "app"}
        # one rated image: too few to train on
        assert submit(url, "case0", cases["case0"][1]["alice"], "alice").status_code == 200
        ctx["too_few"] = train(url, {"max_epochs": 1})
        import requests

        ctx["too_few_sync"] = requests.post(f"{url}/train/probunet", params={"run_sync": "true"},
                                            json={"max_epochs": 1}, timeout=300)
        # two rated images of different sizes: the training could not batch them
        assert submit(url, "big", np.zeros((S + 16, S + 16), np.uint8), "alice").status_code == 200
        ctx["two_sizes"] = train(url, {"max_epochs": 1})
        r = requests.delete(f"{url}/datastore/label", params={"id": "big", "tag": "rater_alice"}, timeout=60)
        assert r.status_code == 200, r.text
        for name in RATERS:
            for i in range(NUM_CASES):
                r = submit(url, f"case{i}", cases[f"case{i}"][1][name], name)
                assert r.status_code == 200, r.text
            time.sleep(1.1)  # distinct submission seconds: the export orders graders by time
        yield url, ctx


def _read_seg_nrrd(data: bytes) -> tuple[np.ndarray, dict[str, str]]:
    """A gzip-encoded uint8 ``.seg.nrrd`` (what the app writes): (array in the header's axis order, header fields)."""
    head, body = data.split(b"\n\n", 1)
    header = dict(line.split(": ", 1) if ": " in line else line.split(":=", 1)
                  for line in head.decode().splitlines()[1:] if not line.startswith("#"))
    assert header["type"] in ("uint8", "unsigned char") and header["encoding"] == "gzip", header
    sizes = [int(n) for n in header["sizes"].split()]
    return np.frombuffer(gzip.decompress(body), np.uint8).reshape(sizes, order="F"), header


def _outcome(status: dict, marker: str = "train probunet:") -> str:
    """The train task's outcome line among the status details (MONAI Label's own 'Result: ...' line follows)."""
    return next((d for d in reversed(status["details"]) if marker in d), "")


def _model_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


@pytestmark_server
def test_too_few_rated_images_fail_with_a_clear_status(train_server):
    _, ctx = train_server
    status = ctx["too_few"]
    assert status["status"] == "ERROR", status
    assert "at least 2" in status["details"][-1] and "FAILED" in status["details"][-1], status["details"]
    assert "Traceback" not in "\n".join(status["details"])
    sync = ctx["too_few_sync"]
    assert sync.status_code == 400 and "at least 2" in sync.json()["detail"], sync.text
    status = ctx["two_sizes"]
    assert status["status"] == "ERROR" and "differ in size" in _outcome(status, "FAILED"), status["details"]
    assert "big [48, 48]" in _outcome(status, "FAILED") and "[32, 32]" in _outcome(status, "FAILED")


@pytestmark_server
def test_export_of_three_raters(train_server, tmp_path):
    from monai_probunet.data import prepare_dataset
    from monai_probunet.data.raters import export_rater_dataset

    _, ctx = train_server
    out = tmp_path / "export"
    datalist = json.loads(Path(prepare_dataset("folder", export_rater_dataset(ctx["studies"], out).parent))
                          .read_text())
    assert datalist["num_graders"] == 3
    entries = {e["case_id"]: e for s in ("training", "validation", "test") for e in datalist[s]}
    assert sorted(entries) == sorted(f"case{i}" for i in range(NUM_CASES))  # case10: nobody outlined it
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [6, 2, 2]
    for cid, e in entries.items():
        assert e["raters"] == ["alice", "bob", "carol"]  # in submission order
        img, masks = ctx["cases"][cid]
        np.testing.assert_array_equal(np.asarray(nib.load(str(out / e["image"])).dataobj), img)
        for path, name in zip(e["label"], e["raters"]):
            np.testing.assert_array_equal(np.asarray(nib.load(str(out / path)).dataobj), masks[name])


@pytestmark_server
def test_training_swaps_in_only_a_better_model(train_server):
    import requests

    from monai_probunet.inference import load_model, predict_hypotheses
    from monai_probunet.model_loading import read_model_settings

    url, ctx = train_server
    model = ctx["model"]
    untrained = _model_bytes(model)
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert info["trainers"]["probunet"]["config"]["max_epochs"] >= 1 and "val_interval" in (
        info["trainers"]["probunet"]["config"])

    # 1. training from the raters' outlines beats the untrained model in use: swapped in, the old one kept
    status = train(url, {"max_epochs": 12, "val_interval": 4})
    assert status["status"] == "DONE", status
    assert "new model in use" in _outcome(status), status["details"]
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["probunet"]
    result = stats["result"]
    assert stats["state"] == "DONE" and result["swapped"] is True and stats["epoch"] == 12
    assert result["new_ged"] < result["current_ged"] and result["num_images"] == 2
    assert result["pretrained_from"] == str(model)  # fine-tuned from the model in use (finetune.yaml)
    assert f"Restored all variables from {model}" in (Path(stats["run_dir"]) / "training.log").read_text()
    assert [v[0] for v in stats["val_ged"]] == [4, 8, 12]  # progress: the bundle's validations, as they ran
    trained = _model_bytes(model)
    assert trained != untrained and trained == _model_bytes(result["new_model"])
    backup = Path(result["backup"])
    assert backup.parent == model.parent and _model_bytes(backup) == untrained
    assert read_model_settings(model)["infer_roi_size"] == [32, 32]  # its model.json came with it
    run_dir = Path(stats["run_dir"])
    export = json.loads((run_dir / "dataset" / "datalist.json").read_text())
    assert sum(len(export[s]) for s in ("training", "validation", "test")) == NUM_CASES

    # the server now answers with the new model: its hypotheses are the library's on the swapped-in file
    r = requests.post(f"{url}/infer/probunet", params={"image": "case3", "output": "json"},
                      data={"params": json.dumps({"center": [15, 15], "num_samples": 8, "seed": 2})}, timeout=120)
    assert r.status_code == 200, r.text
    net, settings = load_model(str(model), ctx["configs"])
    hyp = predict_hypotheses(str(ctx["studies"] / "case3.nii.gz"), [15, 15], net, spacing=settings["spacing"],
                             roi_size=settings["roi_size"], num_samples=8, seed=2, hu_window=settings["hu_window"])
    assert r.json()["presence_count"] == hyp.presence_count
    assert r.json()["areas_mm2"] == pytest.approx([float(a) for a in hyp.areas_mm2], abs=1e-3)
    old_net, _ = load_model(str(backup), ctx["configs"])
    old = predict_hypotheses(str(ctx["studies"] / "case3.nii.gz"), [15, 15], old_net, spacing=settings["spacing"],
                             roi_size=settings["roi_size"], num_samples=8, seed=2, hu_window=settings["hu_window"])
    assert not np.array_equal(np.asarray(old.labels), np.asarray(hyp.labels))  # a different model answered

    # 2. one epoch from scratch is worse than the model now in use: NOT swapped, the model file untouched
    backups = sorted(p.name for p in model.parent.iterdir())
    status = train(url, {"max_epochs": 1, "val_interval": 1, "pretrained": False})
    assert status["status"] == "DONE", status
    assert "NOT used" in _outcome(status), status["details"]
    result = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["probunet"]["result"]
    assert result["swapped"] is False and result["new_ged"] >= result["current_ged"] and result["backup"] is None
    assert result["pretrained_from"] is None
    assert _model_bytes(model) == trained and sorted(p.name for p in model.parent.iterdir()) == backups
    assert Path(result["new_model"]).is_file()  # kept for inspection, not used

    # a bad parameter: one line, nothing run
    r = requests.post(f"{url}/train/probunet", params={"run_sync": "true"}, json={"max_epochs": 2,
                      "val_interval": 3}, timeout=120)
    assert r.status_code == 400 and "val_interval" in r.json()["detail"], r.text
    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["probunet"]
    assert stats["state"] == "FAILED" and "val_interval" in stats["error"] and stats["last_result"] == result


@pytestmark_server
def test_inter_rater_view(train_server):
    import requests

    from monai_probunet.inference import find_presence_threshold, load_model, predict_hypotheses
    from monai_probunet.metrics.ged import generalized_energy_distance

    url, ctx = train_server
    r = requests.post(f"{url}/infer/probunet_raters", params={"image": "case5", "output": "all"},
                      data={"params": json.dumps({"num_samples": 8, "seed": 1})}, timeout=120)
    assert r.status_code == 200, r.text
    parts = _multipart(r)
    reply = json.loads(parts["params"])
    layers, header = _read_seg_nrrd(parts["image"])  # L x I x J x K
    names = [header[f"Segment{i}_Name"] for i in range(layers.shape[0])]
    assert names[:3] == ["rater alice", "rater bob", "rater carol"]
    assert len(names) == 3 + 8 and all(n.startswith(f"h{s} variant ") for s, n in enumerate(names[3:]))
    assert reply["label_names"] == {n: i + 1 for i, n in enumerate(names)}
    masks = ctx["cases"]["case5"][1]
    for k, name in enumerate(RATERS):
        np.testing.assert_array_equal(layers[k, :, :, 0], masks[name])
    # the hypotheses are the library's at the grid centre with the model in use; the GED is theirs vs the raters
    net, settings = load_model(str(ctx["model"]), ctx["configs"])
    hyp = predict_hypotheses(str(ctx["studies"] / "case5.nii.gz"), [15, 15], net, spacing=settings["spacing"],
                             roi_size=settings["roi_size"], num_samples=8, seed=1, hu_window=settings["hu_window"],
                             threshold=find_presence_threshold(str(ctx["model"])))
    np.testing.assert_array_equal(layers[3:, :, :, 0], np.asarray(hyp.labels))
    raters = torch.as_tensor(np.stack([masks[n] for n in RATERS]))[None].long()
    want = generalized_energy_distance(torch.as_tensor(np.asarray(hyp.labels))[None].long(), raters)
    assert reply["ged"]["ged"] == pytest.approx(float(want.ged[0]), abs=1e-5)
    assert reply["ged"]["num_raters"] == 3 and reply["ged"]["num_samples"] == 8
    assert [x["rater"] for x in reply["raters"]] == ["alice", "bob", "carol"]
    assert reply["center_source"] == "grid centre"
    # an image nobody outlined: 400 with one line
    r = requests.post(f"{url}/infer/probunet_raters", params={"image": "case10", "output": "json"},
                      data={"params": "{}"}, timeout=120)
    assert r.status_code == 400 and "no rater" in r.json()["detail"], r.text


# ------------------------------------------------------------------------------------------------ CT volumes

#: two patients' CT volumes of different sizes and spacings (shape, in-plane mm, slice mm), each with an ellipsoid
#: lesion (radii in mm) that the three raters outline in 3-D, each at their own scale
VOLUMES = {"ct_p1": ((48, 44, 7), 0.8, 2.5, (6.0, 5.0, 3.0)), "ct_p2": ((40, 40, 6), 1.0, 3.0, (7.0, 6.0, 4.0))}


def _ellipsoid(shape, spacing, radii) -> np.ndarray:
    """An ellipsoid around the volume's centre voxel (``radii`` in mm)."""
    idx = np.indices(shape).astype(float)
    return (sum(((idx[a] - (shape[a] // 2)) * spacing[a] / radii[a]) ** 2 for a in range(3)) <= 1).astype(np.uint8)


@pytestmark_server
def test_train_on_rated_ct_volumes(tmp_path_factory):
    """Whole CT volumes rated in 3-D by three raters (as Slicer submits them) -> POST /train/probunet?run_sync=true
    -> the crops of every lesion slice, one epoch, the comparison; before, the export refused volumes."""
    import requests

    if not MONAILABEL.exists():
        pytest.skip(f"{MONAILABEL} does not exist: build it with `bash apps/monailabel/setup_venv.sh`")
    root = tmp_path_factory.mktemp("train_volumes")
    studies = root / "studies"
    studies.mkdir()
    rng = np.random.default_rng(3)
    raters, expected = {}, {}
    for vid, (shape, inplane, thick, radii) in VOLUMES.items():
        spacing = (inplane, inplane, thick)
        affine = np.diag([-inplane, -inplane, thick, 1.0])  # as a DICOM series converts: LPS voxel axes
        affine[:3, 3] = [40.0, 30.0, -120.0]
        img = (-850.0 + 15 * rng.standard_normal(shape)).astype(np.float32)
        img[_ellipsoid(shape, spacing, radii) > 0] = 30.0
        nib.save(nib.Nifti1Image(img, affine), str(studies / f"{vid}.nii.gz"))
        raters[vid] = {name: (_ellipsoid(shape, spacing, [r * f for r in radii]), affine) for name, f in RATERS.items()}
        # the union is carol's (the largest): one crop per slice whose centre lies within her z radius
        expected[vid] = sum(abs(k - shape[2] // 2) * thick <= radii[2] * RATERS["carol"] for k in range(shape[2]))
    *_, conf = _tiny_model(root)
    with running_server(root, str(studies), conf) as (url, log):
        for name in RATERS:
            for vid, masks in raters.items():
                mask, affine = masks[name]
                files = {"label": ("label.nii.gz", gzip.compress(nib.Nifti1Image(mask, affine).to_bytes()),
                                   "application/octet-stream")}
                params = {"client_id": name, "label_info": [{"name": "lesion", "idx": 1}]}
                r = requests.put(f"{url}/datastore/label", params={"image": vid}, files=files,
                                 data={"params": json.dumps(params)}, timeout=60)
                assert r.status_code == 200, r.text
            time.sleep(1.1)  # distinct submission seconds: the export orders graders by time
        r = requests.post(f"{url}/train/probunet", params={"run_sync": "true"}, json={"max_epochs": 1},
                          timeout=600)
        assert r.status_code == 200, r.text
        result = r.json()
        server_log = Path(log).read_text()
    assert result["new_ged"] is not None and result["current_ged"] is not None
    line = "new model in use" if result["swapped"] else "new model NOT used"
    assert f"train probunet: {line}: validation GED {result['new_ged']:.4f}" in server_log
    stats = json.loads((root / "app" / "model" / "probunet_train" / "train_stats.json").read_text())
    export = Path(stats["export"])
    datalist = json.loads((export / "datalist.json").read_text())
    entries = [e for s in ("training", "validation", "test") for e in datalist[s]]
    assert {vid: sum(e["image_id"] == vid for e in entries) for vid in VOLUMES} == expected
    assert all(e["raters"] == ["alice", "bob", "carol"] and e["lesion"] == 1 for e in entries)
    validation = {e["patient_id"] for e in datalist["validation"]}
    assert len(validation) == 1 and result["num_images"] == expected[validation.pop()]
    for e in entries:  # crops of the model's field (tiny.yaml: 32 x 32 px at 1 mm), lesion at the centre
        crop = nib.load(str(export / e["image"]))
        assert crop.shape == (32, 32) and np.allclose(crop.header.get_zooms()[:2], (1.0, 1.0))
        carol = np.asarray(nib.load(str(export / e["label"][2])).dataobj)
        assert carol[16, 16] == 1 and carol[0].sum() == carol[:, 0].sum() == 0
