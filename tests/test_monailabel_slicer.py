"""The MONAI Label app driven as 3D Slicer's MONAI Label module drives it (a real `monailabel start_server`).

The requests are built as the module's source builds them (plugins/slicer/MONAILabel/MONAILabel.py and
MONAILabelLib/client.py of Project-MONAI/MONAILabel): ``GET /info/``; models of type ``deepgrow``/``deepedit`` go
to the click (SmartEdit) panel; a click sends ``POST /infer/<model>?image=<id>`` (no ``output``: the answer is
multipart with the result file and ``params``) with the form field ``params`` = ``{"label": <segment name>,
"foreground": [[i, j, k], ...], "background": [...], <the model's config keys>, "slice": k (2-D models),
"result_extension": ".nrrd", "result_dtype": "uint8", "client_id": ...}``, the points as IJK voxel indices of the
volume, filtered to the clicked slice for a 2-D model. The module then reads the returned file as a labelmap
(value 1 into the selected segment on that slice) or, with its file-extension setting ``.seg.nrrd``, as a
segmentation with the file's segment names. Both readings are checked here against the library's hypotheses.

Uses the shipped model (bundle/models/model.pt, its presence_threshold.json, bundle/configs/train.yaml). Slow:
starts servers (about 20-40 s each on a 2-core CPU).
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import io
import json
import re
import warnings
from pathlib import Path
from urllib.parse import quote_plus, urlparse

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import background_server, is_shipped_model
from tests.test_monailabel import (
    MONAILABEL,
    REPO,
    _load_app_module,
    expected_label,
    left_behind,
    running_server,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MONAILABEL.exists(),
                       reason=f"{MONAILABEL} does not exist: build it with `bash apps/monailabel/setup_venv.sh`"),
]

MODEL = REPO / "bundle" / "models" / "model.pt"
CONFIG = REPO / "bundle" / "configs" / "train.yaml"
BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"  # the module's multipart boundary


# ------------------------------------------------------------------------------------ the module's client


def slicer_infer(url: str, model: str, image_id: str, params: dict) -> tuple[int, str | None, bytes | None, dict]:
    """POST as MONAILabelClient.infer does; returns (status, result file name, file bytes, params or error)."""
    params = {**params, "result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "user-xyz"}
    selector = f"/infer/{quote_plus(model)}?image={quote_plus(image_id)}"
    lines = [f"--{BOUNDARY}", 'Content-Disposition: form-data; name="params"', "", json.dumps(params),
             f"--{BOUNDARY}--", ""]
    body = "\r\n".join(lines).encode()
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    conn.request("POST", selector, body, {"content-type": f"multipart/form-data; boundary={BOUNDARY}",
                                          "content-length": str(len(body))})
    resp = conn.getresponse()
    ctype = resp.getheader("content-type", "")
    if resp.status != 200 or "multipart" not in ctype:
        data = resp.read()
        return resp.status, None, None, json.loads(data) if data[:1] in (b"{", b"[") else {"raw": data}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import cgi  # what the module parses the answer with

        fs = cgi.FieldStorage(fp=resp, environ={"REQUEST_METHOD": "POST"}, headers=resp.msg, keep_blank_values=True)
    form, files = {}, {}
    for f in fs.list:
        if f.filename:
            files[f.filename] = f.value
        else:
            form[f.name] = f.value
    result = form.get("params") if files else form
    result = json.loads(result) if isinstance(result, (str, bytes)) else result
    name = next(iter(files), None)
    return resp.status, name, files.get(name), result


def click_params(info: dict, model: str, clicks: list[list[int]], segment: str = "lesion", **config) -> dict:
    """The params of onClickDeepgrow for a 2-D model: clicks on the last clicked slice, the config, the slice."""
    m = info["models"][model]
    assert m["type"] in ("deepgrow", "deepedit")  # the module's click panel
    slice_index = clicks[-1][2]
    fg = [p for p in clicks if p[2] == slice_index] if slice_index else clicks
    params = {"label": segment, "foreground": fg, "background": []}
    params.update({k: v[0] if isinstance(v, list) else v for k, v in {**m["config"], **config}.items()})
    if m.get("dimension", 3) == 2:
        params["slice"] = slice_index
    return params


# ------------------------------------------------------------------------------------ reading the result


def read_nrrd(data: bytes) -> tuple[dict, np.ndarray]:
    """Header fields and the array (NRRD axis order, first axis fastest) of a gzip/raw NRRD."""
    head, raw = data.split(b"\n\n", 1)
    fields = {}
    for line in head.decode().splitlines()[1:]:
        if line.startswith("#"):
            continue
        key, _, value = line.partition(":=") if ":=" in line else line.partition(": ")
        fields[key.strip()] = value.strip()
    assert fields["type"] in ("unsigned char", "uchar", "uint8")
    sizes = [int(v) for v in fields["sizes"].split()]
    raw = gzip.decompress(raw) if fields.get("encoding") == "gzip" else raw
    arr = np.frombuffer(raw, np.uint8).reshape(sizes[::-1]).transpose()
    return fields, arr


def nrrd_geometry(fields: dict) -> np.ndarray:
    """The 4 x 4 voxel -> RAS affine of the spatial axes of a NRRD header (LPS space)."""
    assert fields["space"] == "left-posterior-superior"
    vecs = [v for v in re.findall(r"\(([^)]*)\)|none", fields["space directions"]) if v]
    d = np.array([[float(x) for x in v.split(",")] for v in vecs]).T  # columns = axes
    o = np.array([float(x) for x in re.findall(r"\(([^)]*)\)", fields["space origin"])[0].split(",")])
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = d, o
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


# ------------------------------------------------------------------------------------ fixtures


def new_studies(tmp_path_factory, name: str) -> tuple[Path, Path]:
    """A fresh server root ``<tmp>/<name>`` with an empty ``studies`` folder; skips the test without the trained
    model."""
    if not MODEL.is_file():
        pytest.skip(f"{MODEL} does not exist (train the bundle)")
    root = tmp_path_factory.mktemp(name)
    studies = root / "studies"
    studies.mkdir()
    return root, studies


@pytest.fixture(scope="module")
def volume_server(tmp_path_factory):
    """A server on the shipped model with a 3-D CT volume (two lesions) and a 2-D slice in its studies folder."""
    root, studies = new_studies(tmp_path_factory, "slicer")
    rng = np.random.default_rng(0)
    vol = (-850.0 + 20 * rng.standard_normal((96, 80, 10))).astype(np.float32)
    ii, jj = np.meshgrid(np.arange(96), np.arange(80), indexing="ij")
    for k in range(2, 8):  # a round soft-tissue lesion of radius 6 mm across slices 2..7
        vol[..., k][(ii - 40) ** 2 + (jj - 36) ** 2 <= (6 / 0.8) ** 2] = 40.0
    affine = np.array([[-0.8, 0, 0, 40.0], [0, -0.8, 0, 30.0], [0, 0, 2.5, -60.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(vol, affine), str(studies / "chest.nii.gz"))
    nib.save(nib.Nifti1Image(vol[..., 4], affine), str(studies / "slice.nii.gz"))
    conf = {"model_path": MODEL, "network_config": CONFIG}
    with running_server(root, str(studies), conf) as (url, log):
        import requests

        info = requests.get(f"{url}/info/", timeout=30).json()
        yield {"url": url, "info": info, "studies": studies, "root": root, "log": log, "affine": affine}


@pytest.fixture(scope="module")
def library():
    from monai_probunet.inference import find_presence_threshold, load_model

    network, settings = load_model(MODEL, CONFIG)
    return network, settings, find_presence_threshold(MODEL)


def library_hypotheses(library, image: Path, center, num_samples=16, seed=0):
    from monai_probunet.inference import predict_hypotheses

    network, settings, threshold = library
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return predict_hypotheses(image, center, network, spacing=settings["spacing"], roi_size=settings["roi_size"],
                                  num_samples=num_samples, seed=seed, threshold=threshold,
                                  hu_window=settings["hu_window"])


# ------------------------------------------------------------------------------------ tests


def test_info_puts_the_model_in_the_click_panel(volume_server):
    info = volume_server["info"]
    m = info["models"]["probunet"]
    assert m["type"] == "deepgrow" and m["dimension"] == 2 and m["model_file_exists"]
    # not in the "Auto Segmentation" panel (segmentation/detection types get no clicks)
    assert [k for k, v in info["models"].items() if v["type"] in ("segmentation", "detection")] == []
    assert {"num_samples", "seed", "hypotheses"} <= set(m["config"])
    assert "warmed up" in volume_server["log"].read_text()


def slicer_put(url: str, selector: str, params: dict, field: str, file_name: str, data: bytes) -> tuple[int, str]:
    """PUT a file as the module's client does (multipart: ``params`` as JSON, the file in ``field``, its
    boundary); returns (status, answer text)."""
    body = b"".join([
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{json.dumps(params)}\r\n".encode(),
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode(), data, b"\r\n", f"--{BOUNDARY}--\r\n".encode(),
    ])
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)
    conn.request("PUT", selector, body, {
        "content-type": f"multipart/form-data; boundary={BOUNDARY}", "content-length": str(len(body))})
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def slicer_upload(url: str, image_id: str, data: bytes, file_name: str) -> tuple[int, dict]:
    """PUT as MONAILabelClient.upload_image does (3D Slicer sends a volume the server does not have before the first
    click on it: the node saved to a temporary file, the node's name as the image id); returns (status, answer)."""
    status, text = slicer_put(url, f"/datastore/?image={quote_plus(image_id)}", {"client_id": "user-xyz"}, "file",
                              file_name, data)
    return status, json.loads(text or "{}")


def test_a_volume_uploaded_from_slicer_then_clicked(volume_server):
    """A volume loaded in 3D Slicer from elsewhere: the module uploads it under the node's name, then sends the
    click. The answer is the one for the same image already on the server, and nothing is left in the server's
    temporary folder."""
    url, info = volume_server["url"], volume_server["info"]
    data = (volume_server["studies"] / "chest.nii.gz").read_bytes()
    status, answer = slicer_upload(url, "CT chest 2", data, "tmpk2j3abcd.nii.gz")
    assert status == 200 and answer.get("image") == "CT chest 2", answer
    params = click_params(info, "probunet", [[40, 37, 5]], mode="2d")
    status, _, uploaded, result = slicer_infer(url, "probunet", "CT chest 2", params)
    assert status == 200, result
    status, _, same, ref = slicer_infer(url, "probunet", "chest", params)
    assert status == 200 and result["presence_count"] == ref["presence_count"] > 0
    assert result["label_names"] == ref["label_names"]
    np.testing.assert_array_equal(read_nrrd(uploaded)[1], read_nrrd(same)[1])
    assert not left_behind(volume_server["root"] / "tmp")


def slicer_submit(url: str, image_id: str, mask: np.ndarray, affine: np.ndarray, client_id: str) -> tuple[int, str]:
    """PUT /datastore/label as the module's Submit Label does (the label saved as NIfTI, ``label_info`` and the
    rater's Client/User-ID in ``params``); returns (status, answer text)."""
    params = {"label_info": [{"name": "lesion", "idx": 1}], "model": "probunet", "client_id": client_id}
    return slicer_put(url, f"/datastore/label?image={quote_plus(image_id)}", params, "label", "tmplabel.nii.gz",
                      gzip.compress(nib.Nifti1Image(mask, affine).to_bytes()))


def test_an_upload_under_an_existing_name_never_replaces_the_stored_image(volume_server, tmp_path):
    """3D Slicer uploads a volume loaded with File > Add Data under its node's name, on every Submit. The same
    volume again (another rater, saved anew by ITK) is accepted and changes nothing; another volume under a name the
    datastore holds is refused with 409 saying how it differs and what to do: the stored file and its raters' labels
    stay as they were (MONAI Label replaced the file, and the raters' labels then outlined another image)."""
    import hashlib

    import itk
    import requests

    url, studies, affine = volume_server["url"], volume_server["studies"], volume_server["affine"]
    data = (studies / "chest.nii.gz").read_bytes()
    assert slicer_upload(url, "rated upload", data, "tmp1a2b3c4d.nii.gz") == (200, {"image": "rated upload"})
    stored = studies / "rated upload.nii.gz"
    md5 = hashlib.md5(stored.read_bytes()).hexdigest()
    vol, mask = np.asarray(nib.load(str(stored)).dataobj), np.zeros((96, 80, 10), np.uint8)
    mask[38:43, 34:39, 3:6] = 1
    assert slicer_submit(url, "rated upload", mask, affine, "bob")[0] == 200

    itk.imwrite(itk.imread(str(stored)), str(tmp_path / "resaved.nii.gz"))  # the volume as Slicer saves it (ITK)
    resaved = (tmp_path / "resaved.nii.gz").read_bytes()
    assert resaved != data
    assert slicer_upload(url, "rated upload", resaved, "tmp5e6f7a8b.nii.gz") == (200, {"image": "rated upload"})
    assert slicer_submit(url, "rated upload", mask, affine, "carol")[0] == 200  # a second rater, same volume

    edited = vol.copy()
    edited[..., :2] = -1000.0  # e.g. a re-export of the study, or another patient's volume of the same name
    shifted = affine.copy()
    shifted[2, 3] += 2.5  # the same voxels one slice higher
    for array, aff, how in ((edited, affine, "15,360 of 76,800 voxel values differ"),
                            (vol, shifted, "geometry (origin, spacing or direction) differs by up to 2.5 mm"),
                            (vol[..., :9], affine, "size 96 x 80 x 9 voxels, the stored image's 96 x 80 x 10")):
        body = gzip.compress(nib.Nifti1Image(array, aff).to_bytes())
        status, answer = slicer_upload(url, "rated upload", body, "tmp9c0d1e2f.nii.gz")
        assert status == 409, answer
        detail = answer["detail"]
        assert detail.startswith("image 'rated upload' is already in the datastore (rated upload.nii.gz)"), detail
        assert how in detail and "rename it in the Data module" in detail and "\n" not in detail, detail
    assert hashlib.md5(stored.read_bytes()).hexdigest() == md5
    assert sorted(p.name for p in studies.glob("rated upload*")) == ["rated upload.nii.gz"]
    labels = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]["rated upload"]
    assert sorted(labels["labels"]) == ["rater_bob", "rater_carol"], labels
    got = requests.get(f"{url}/datastore/label", params={"label": "rated upload", "tag": "rater_bob"}, timeout=30)
    np.testing.assert_array_equal(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(got.content)).dataobj), mask)

    # a 2-D image: Slicer saves it as a volume of one slice, the same image
    one_slice = np.asarray(nib.load(str(studies / "slice.nii.gz")).dataobj)[..., None]
    body = gzip.compress(nib.Nifti1Image(one_slice, affine).to_bytes())
    assert slicer_upload(url, "slice", body, "tmp3f4a5b6c.nii.gz") == (200, {"image": "slice"})
    assert not left_behind(volume_server["root"] / "tmp")


def read_ahead_lines(log: Path, before: int, timeout_s: float = 60.0) -> list[str]:
    """The server log's lines that say an image was read ahead of its first click, once there are more than
    ``before`` of them (or ``timeout_s`` has passed)."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        lines = [line for line in log.read_text().splitlines() if "read before its first click" in line]
        if len(lines) > before or time.monotonic() > deadline:
            return lines
        time.sleep(0.2)


def test_the_image_slicer_opens_is_read_before_the_first_click(volume_server):
    """3D Slicer opens an image by downloading it (``GET /datastore/image``) or, after *Next Sample*, from the path in
    the answer where it can: either way the server reads the image in the background, and the first click finds it
    in memory (``timings_s.image_kept``), as the next clicks do."""
    import requests

    url, info, log = volume_server["url"], volume_server["info"], volume_server["log"]
    data = (volume_server["studies"] / "chest.nii.gz").read_bytes()
    for image_id in ("0 read ahead a", "0 read ahead b"):  # the first ids of the folder: Next Sample's `first`
        assert slicer_upload(url, image_id, data, "tmp_read_ahead.nii.gz")[0] == 200
    params = click_params(info, "probunet", [[40, 37, 5]], mode="2d")
    opens = [
        ("0 read ahead b", lambda: requests.get(f"{url}/datastore/image", params={"image": "0 read ahead b"},
                                                timeout=60)),
        ("0 read ahead a", lambda: requests.post(f"{url}/activelearning/first", json={"client_id": "user-xyz"},
                                                 timeout=60)),
        ("slice", lambda: requests.get(f"{url}/datastore/image", params={"image": "slice"}, timeout=60)),
    ]
    for image_id, open_it in opens:
        before = len(read_ahead_lines(log, -1))
        r = open_it()
        assert r.status_code == 200, r.text
        if "activelearning" in r.url:
            assert r.json()["id"] == image_id, r.text
        lines = read_ahead_lines(log, before)
        assert len(lines) == before + 1 and f"{image_id}.nii.gz: read before its first click" in lines[-1], lines
        click = [[40, 37, 0]] if image_id == "slice" else [[40, 37, 5]]
        status, _, _, result = slicer_infer(url, "probunet", image_id, {**params, "foreground": click})
        assert status == 200 and result["timings_s"]["image_kept"] is True, result
    # the next click on the same image: kept, and nothing more read
    status, _, _, result = slicer_infer(url, "probunet", "slice", {**params, "foreground": [[41, 36, 0]]})
    assert status == 200 and result["timings_s"]["image_kept"] is True
    assert len(read_ahead_lines(log, -1, timeout_s=0)) == before + 1


def test_click_on_a_volume_as_slicer(volume_server, library):
    """A foreground click on slice 5 of the volume: the label lands on that slice, as the library predicts, with
    the image's geometry and a segment name carrying presence and ambiguity."""
    url, info = volume_server["url"], volume_server["info"]
    click = [40, 37, 5]
    params = click_params(info, "probunet", [[10, 10, 2], click], mode="2d")  # an earlier click on another slice
    assert params["foreground"] == [click] and params["slice"] == 5
    status, name, data, result = slicer_infer(url, "probunet", "chest", params)
    assert status == 200, result
    assert name.endswith(".seg.nrrd") and result["center_source"] == "foreground[0]"
    assert result["center_voxel"] == [40.0, 37.0, 5.0] and result["slice_index"] == 5

    h = library_hypotheses(library, volume_server["studies"] / "chest.nii.gz", click)
    # the presence threshold shipped beside the model names its weights: retrained in place, the fallback rule
    assert (h.threshold is not None) == is_shipped_model(MODEL)
    want, seg_name = expected_label(h)
    assert result["presence_count"] == h.presence_count
    assert result["label_names"] == {seg_name: 1}
    assert seg_name.startswith("lesion p=" if want.any() else "no lesion p=")
    assert ("ambiguous" in seg_name) == h.ambiguous
    assert ("label is empty iff count <=" if h.threshold is not None else "label is empty iff p < 0.25") in \
        result["label_rule"]

    # the module with the default file extension: sitk reads the file as a labelmap (here: ITK's NRRD reader)
    import itk

    path = volume_server["root"] / "result.seg.nrrd"
    path.write_bytes(data)
    lab = itk.imread(str(path))
    src = itk.imread(str(volume_server["studies"] / "chest.nii.gz"))
    np.testing.assert_allclose(np.asarray(lab.GetOrigin()), np.asarray(src.GetOrigin()), atol=1e-4)
    np.testing.assert_allclose(np.asarray(lab.GetSpacing()), np.asarray(src.GetSpacing()), atol=1e-5)
    np.testing.assert_allclose(itk.array_from_matrix(lab.GetDirection()), itk.array_from_matrix(src.GetDirection()),
                               atol=1e-6)
    arr = itk.array_view_from_image(lab).transpose()  # ITK: k, j, i
    np.testing.assert_array_equal(arr, want)
    assert not np.delete(arr, 5, axis=2).any()  # only the clicked slice

    # the module with file extension .seg.nrrd: the segment name from the file
    fields, arr2 = read_nrrd(data)
    assert fields["Segment0_Name"] == seg_name and fields["Segment0_LabelValue"] == "1"
    np.testing.assert_allclose(nrrd_geometry(fields), volume_server["affine"], atol=1e-5)
    np.testing.assert_array_equal(arr2, want)


def test_hypotheses_as_named_overlapping_segments(volume_server, library):
    url, info = volume_server["url"], volume_server["info"]
    click = [40, 36, 4]
    status, name, data, result = slicer_infer(url, "probunet", "chest",
                                              click_params(info, "probunet", [click], hypotheses=True, mode="2d"))
    assert status == 200, result
    h = library_hypotheses(library, volume_server["studies"] / "chest.nii.gz", click)
    fields, arr = read_nrrd(data)
    assert arr.shape == (16, 96, 80, 10) and fields["kinds"] == "list domain domain domain"
    np.testing.assert_array_equal(arr, h.labels)
    rule = _load_app_module("label_rule")
    want = rule.hypothesis_segment_names(h.variants, 16)
    assert [fields[f"Segment{s}_Name"] for s in range(16)] == want
    assert [fields[f"Segment{s}_Layer"] for s in range(16)] == [str(s) for s in range(16)]
    assert result["label_names"] == {n: s + 1 for s, n in enumerate(want)}
    assert re.fullmatch(r"h3 variant [A-Z]+ \d+/16( no lesion)?", want[3])


def test_raters_view_in_2d_mode_scores_the_clicked_slice(volume_server):
    """``probunet_raters`` on a volume in mode 2d: the hypotheses cover the clicked slice only, so their GED against
    the raters' 3-D outlines is taken on that slice (on the whole grid the other slices would count as misses)."""
    import requests
    import torch

    from monai_probunet.metrics.ged import generalized_energy_distance

    url = volume_server["url"]
    ii, jj = np.meshgrid(np.arange(96), np.arange(80), indexing="ij")
    outline = np.zeros((96, 80, 10), np.uint8)
    outline[..., 2:8][(ii - 40) ** 2 + (jj - 36) ** 2 <= 7 ** 2] = 1  # the lesion on slices 2-7
    body = nib.Nifti1Image(outline, volume_server["affine"]).to_bytes()
    r = requests.put(f"{url}/datastore/label", params={"image": "chest"}, timeout=60,
                     files={"label": ("label.nii", body, "application/octet-stream")},
                     data={"params": json.dumps({"client_id": "alice", "label_info": [{"name": "lesion", "idx": 1}]})})
    assert r.status_code == 200, r.text
    status, _, data, result = slicer_infer(url, "probunet_raters", "chest",
                                           {"foreground": [[40, 36, 4]], "slice": 4, "mode": "2d"})
    assert status == 200, result
    _, arr = read_nrrd(data)
    assert arr.shape == (17, 96, 80, 10)  # the rater, then the 16 hypotheses
    np.testing.assert_array_equal(arr[0], outline)
    assert not np.delete(arr[1:], 4, axis=3).any()  # hypotheses on the clicked slice only
    terms = generalized_energy_distance(torch.as_tensor(arr[None, 1:, ..., 4]).long(),
                                        torch.as_tensor(arr[None, :1, ..., 4]).long())
    assert result["ged"]["ged"] == pytest.approx(float(terms.ged[0]), abs=1e-5)
    assert "slice 4" in result["ged"]["estimator"]


def test_click_on_a_2d_slice(volume_server, library):
    """Slicer shows a 2-D image as one slice: its clicks are [i, j, 0]."""
    url, info = volume_server["url"], volume_server["info"]
    status, _, data, result = slicer_infer(url, "probunet", "slice", click_params(info, "probunet", [[40, 36, 0]]))
    assert status == 200, result
    h = library_hypotheses(library, volume_server["studies"] / "slice.nii.gz", [40, 36])
    want, seg_name = expected_label(h)
    fields, arr = read_nrrd(data)
    assert arr.shape == (96, 80, 1) and fields["Segment0_Name"] == seg_name
    np.testing.assert_array_equal(arr[..., 0], want)


def test_no_click_is_refused(volume_server):
    """What the module sends for a 3-D 'update' without points, or a REST call without a centre: 400 + message."""
    url, info = volume_server["url"], volume_server["info"]
    params = click_params(info, "probunet", [[40, 36, 4]])
    params["foreground"] = []
    status, name, _, result = slicer_infer(url, "probunet", "chest", params)
    assert status == 400 and name is None
    assert "click the centre of the lesion" in result["detail"]


def test_missing_model_is_said_at_start(tmp_path):
    import requests

    studies = tmp_path / "studies"
    studies.mkdir()
    nib.save(nib.Nifti1Image(np.full((32, 32), -800.0, np.float32), np.eye(4)), str(studies / "a.nii.gz"))
    missing = tmp_path / "no_such_model.pt"
    with running_server(tmp_path, str(studies), {"model_path": missing, "network_config": CONFIG}) as (url, log):
        text = log.read_text()
        assert f"model file {missing} does not exist" in text and "ERROR" in text
        m = requests.get(f"{url}/info/", timeout=30).json()["models"]["probunet"]
        assert m["model_file_exists"] is False and m["description"].startswith("UNAVAILABLE")
        status, _, _, result = slicer_infer(url, "probunet", "a",
                                            {"label": "lesion", "foreground": [[16, 16, 0]], "background": []})
        assert status == 503 and "does not exist" in result["detail"]


def test_a_studies_folder_slicer_would_see_empty_is_said_at_start(tmp_path):
    """A CD's DICOM folder as --studies: the server starts, lists no image, and its log says why in one warning
    line; a file as --studies stops the server with one error line (exit status 2), not MONAI Label's traceback."""
    import shutil
    import subprocess

    import pydicom.data
    import requests

    from tests.test_monailabel import server_env

    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    series = tmp_path / "cd" / "DICOM" / "SE1"
    series.mkdir(parents=True)
    shutil.copy(ct, series / "IM0001")
    with running_server(tmp_path, str(tmp_path / "cd"), {"warmup": "false"}) as (url, log):
        assert requests.get(f"{url}/datastore/?output=all", timeout=30).json()["objects"] == {}
        notes = [line for line in log.read_text().splitlines() if "[WARNING]" in line and "DICOM file(s)" in line]
        assert len(notes) == 1 and "holds 1 DICOM file(s) in 1 folder(s)" in notes[0], log.read_text()[-3000:]
    app = tmp_path / "app"  # the copy running_server made
    proc = subprocess.run([str(MONAILABEL), "start_server", "--app", str(app), "--studies", str(ct), "--conf",
                           "zoo_source", "local", "--conf", "warmup", "false", "--host", "127.0.0.1", "--port", "1"],
                          capture_output=True, text=True, env=server_env(), cwd=str(tmp_path), timeout=120, check=False)
    out = proc.stdout + proc.stderr
    errors = [line for line in out.splitlines() if "[ERROR]" in line]
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert len(errors) == 1 and errors[0].endswith(f"--studies {ct} is a file: give a folder of images (NIfTI or "
                                                   "NRRD) or a DICOMweb server's URL (http://HOST:8042/dicom-web)."), \
        out


# ------------------------------------------------------------------------------------ DICOM via DICOMweb (Orthanc)

ORTHANC_SCRIPT = REPO / "apps" / "monailabel" / "orthanc" / "start_orthanc.sh"


def _orthanc_installed() -> bool:
    import shutil

    return bool(shutil.which("Orthanc") or Path("/usr/sbin/Orthanc").exists()) and bool(
        list(Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")) if Path("/usr/lib/orthanc").is_dir() else [])


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """Orthanc + DICOMweb started by apps/monailabel/orthanc/start_orthanc.sh on a free loopback port."""
    from tests.test_monailabel import _free_port

    if not _orthanc_installed():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed: apt-get install -y orthanc orthanc-dicomweb")
    work = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = ["bash", str(ORTHANC_SCRIPT), str(work), str(port)]
    with background_server(cmd, f"{url}/dicom-web/studies", work / "orthanc.log", 60, "Orthanc"):
        yield url


def seg_to_grid(seg, shape: tuple, affine_ras: np.ndarray) -> dict[int, np.ndarray]:
    """Read a DICOM SEG back onto a voxel grid (pydicom only): segment number -> ``shape`` uint8 volume, and the
    number of grid voxels each frame pixel landed on exactly."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns))
    inv = np.linalg.inv(affine_ras)
    out: dict[int, np.ndarray] = {}
    r, c = np.meshgrid(np.arange(int(seg.Rows)), np.arange(int(seg.Columns)), indexing="ij")
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        lps = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        vox = (lps * [-1.0, -1.0, 1.0]) @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(vox)
        assert np.abs(vox - idx).max() < 1e-3  # SEG pixels sit exactly on the grid's voxel centres
        idx = idx.astype(int)
        vol = out.setdefault(number, np.zeros(shape, np.uint8))
        vol[idx[..., 0], idx[..., 1], idx[..., 2]] = frames[f]
    return out


def orthanc_series(orthanc: str, folder: Path, **kwargs) -> list:
    """A synthetic CT series (``make_ct_series.make_series(folder, **kwargs)``) stored in Orthanc; its slices as
    pydicom datasets."""
    import sys

    import pydicom

    sys.path.insert(0, str(REPO / "apps" / "monailabel" / "orthanc"))
    from make_ct_series import make_series, store

    files = make_series(folder, **kwargs)
    store(files, orthanc)
    return [pydicom.dcmread(str(f)) for f in files]


def series_image_and_click(url: str, series_uid: str, ds, row: int, col: int, tmp_path: Path):
    """The series as Slicer downloads it (``GET /datastore/image`` -> ``image.nii.gz``) and the click in its IJK: the
    voxel of pixel (``row``, ``col``) of the DICOM slice ``ds``. Returns ``(nibabel image, [i, j, k])``."""
    import requests

    r = requests.get(f"{url}/datastore/image", params={"image": series_uid}, timeout=120)
    assert r.status_code == 200
    (tmp_path / "image.nii.gz").write_bytes(r.content)
    img = nib.load(str(tmp_path / "image.nii.gz"))
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    lps = np.array([float(v) for v in ds.ImagePositionPatient]) + col * float(ds.PixelSpacing[1]) * iop[:3] \
        + row * float(ds.PixelSpacing[0]) * iop[3:]
    ijk = np.linalg.inv(img.affine) @ np.r_[lps * [-1, -1, 1], 1.0]
    return img, [int(round(v)) for v in ijk[:3]]


def infer_series(url: str, series_uid: str, params: dict, tmp_path: Path):
    """The click ``params`` on the series answered as NIfTI (``output=all`` -> ``label.nii.gz``) and as a DICOM SEG
    (``seg.dcm``). Returns ``(nibabel label image, uint8 label array, result params, pydicom SEG dataset)``."""
    import pydicom
    import requests

    from tests.test_monailabel import _multipart

    r_nii = requests.post(f"{url}/infer/probunet", params={"image": series_uid, "output": "all"},
                          data={"params": json.dumps({**params, "result_extension": ".nii.gz"})}, timeout=300)
    assert r_nii.status_code == 200, r_nii.text
    parts = _multipart(r_nii)
    (tmp_path / "label.nii.gz").write_bytes(parts["image"])
    lab = nib.load(str(tmp_path / "label.nii.gz"))
    r_seg = requests.post(f"{url}/infer/probunet", params={"image": series_uid, "output": "dicom_seg"},
                          data={"params": json.dumps(params)}, timeout=300)
    assert r_seg.status_code == 200, r_seg.text
    (tmp_path / "seg.dcm").write_bytes(r_seg.content)
    seg = pydicom.dcmread(str(tmp_path / "seg.dcm"))
    return lab, np.asarray(lab.dataobj).astype(np.uint8), json.loads(parts["params"]), seg


def test_dicomweb_series_to_dicom_seg(orthanc, tmp_path):
    """A CT series stored in Orthanc, MONAI Label on --studies <orthanc>/dicom-web: a click answered as a DICOM SEG
    of the series (read back voxel by voxel = the NIfTI answer on the same volume), and stored back in Orthanc."""
    import pydicom
    import requests

    src = orthanc_series(orthanc, tmp_path / "series", slices=8, thickness=2.5, radius_mm=5.0, seed=1)
    series_uid, study_uid = str(src[0].SeriesInstanceUID), str(src[0].StudyInstanceUID)
    assert requests.get(f"{orthanc}/dicom-web/studies/{study_uid}/series", timeout=10).status_code == 200

    root = tmp_path / "label"
    root.mkdir()
    conf = {"model_path": MODEL, "network_config": CONFIG}
    with running_server(root, f"{orthanc}/dicom-web", conf) as (url, log):
        # Slicer's "Next Sample": the series listed by QIDO-RS from Orthanc
        nxt = requests.post(f"{url}/activelearning/first", json={"client_id": "user-xyz"}, timeout=120)
        assert nxt.status_code == 200 and nxt.json()["id"] == series_uid, nxt.text
        # where a client shares the server's disk it loads "path": the series' NIfTI in the cache, beside its files,
        # not a temporary conversion (left behind in the server's temporary folder, one per series)
        path = Path(nxt.json()["path"])
        assert path.is_file() and path.with_name(f"{series_uid}").is_dir(), nxt.text
        check_cached_as_monai_label_converts(root, series_uid)  # 8 slices
        # the image as Slicer downloads it, and the click in its IJK: the lesion centre (row 64, column 56, slice 4)
        img, click = series_image_and_click(url, series_uid, src[4], 64, 56, tmp_path)
        params = {"foreground": [click], "background": [], "label": "lesion", "num_samples": 16, "seed": 0}

        lab, label, result, seg = infer_series(url, series_uid, params, tmp_path)
        assert not left_behind(root / "tmp")
        np.testing.assert_allclose(lab.affine, img.affine, atol=1e-4)
        assert label.any() and result["label_shows_lesion"]  # the lesion is found at the click
        assert seg.Modality == "SEG" and seg.StudyInstanceUID == study_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
        assert seg.FrameOfReferenceUID == src[0].FrameOfReferenceUID and seg.PatientID == src[0].PatientID
        assert int(seg.NumberOfFrames) == np.count_nonzero(label.any(axis=(0, 1)))  # a frame per slice of the label
        assert [s.SegmentLabel for s in seg.SegmentSequence] == list(result["label_names"])
        back = seg_to_grid(seg, label.shape, img.affine)
        assert list(back) == [1]
        np.testing.assert_array_equal(back[1], label)  # voxel by voxel: the SEG = the NIfTI answer

        # stored back in Orthanc as a new SEG series of the same study
        r_store = requests.post(f"{url}/infer/probunet", params={"image": series_uid, "output": "json"},
                                data={"params": json.dumps({**params, "store_dicom_seg": True})}, timeout=300)
        assert r_store.status_code == 200, r_store.text
        stored = r_store.json()["dicom_seg"]
        assert stored["stored_to"].endswith("/dicom-web") and stored["ReferencedSeriesInstanceUID"] == series_uid
        series = requests.get(f"{orthanc}/dicom-web/studies/{study_uid}/series", timeout=10).json()
        uids = {s["0020000E"]["Value"][0]: s.get("00080060", {}).get("Value", [""])[0] for s in series}
        assert uids.get(stored["SeriesInstanceUID"]) == "SEG"
        seg_series = {u for u, m in uids.items() if m == "SEG"}

        # Slicer's "Submit Label": PUT /datastore/label?image=<id> with the labelmap and label_info (as its client)
        body_label = (tmp_path / "label.nii.gz").read_bytes()

        def submit(client_id: str):
            params = {"label_info": [{"name": "lesion (reviewed)", "idx": 1}], "model": "probunet",
                      "client_id": client_id}
            return slicer_put(url, f"/datastore/label?image={quote_plus(series_uid)}", params, "label",
                              "label.nii.gz", body_label)

        # the module's default Client/User-ID is everyone's: the SEG would name nobody
        status, text = submit("user-xyz")
        assert status == 400 and "set your name under Edit > Application Settings" in text, text
        status, text = submit("alice")
        assert status == 200, text
        series = requests.get(f"{orthanc}/dicom-web/studies/{study_uid}/series", timeout=10).json()
        new = {s["0020000E"]["Value"][0] for s in series if s.get("00080060", {}).get("Value") == ["SEG"]} - seg_series
        assert len(new) == 1
        found = requests.post(f"{orthanc}/tools/find", json={"Level": "Instance", "Query": {
            "SeriesInstanceUID": new.pop()}}, timeout=10).json()
        submitted = pydicom.dcmread(io.BytesIO(requests.get(f"{orthanc}/instances/{found[0]}/file", timeout=10).content))
        assert [s.SegmentLabel for s in submitted.SegmentSequence] == ["lesion (reviewed)"]
        assert submitted.ContentCreatorName == "alice" and submitted.SegmentSequence[0].SegmentAlgorithmType == \
            "SEMIAUTOMATIC"  # a person's outline (the model's answer is AUTOMATIC)
        assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC" and not seg.get("ContentCreatorName")
        assert submitted.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
        np.testing.assert_array_equal(seg_to_grid(submitted, label.shape, img.affine)[1], label)

        # Next Sample does not offer the series just outlined again (MONAI Label keeps its list of labelled series
        # for 2 hours): the only CT series is labelled, so nothing is left
        nxt = requests.post(f"{url}/activelearning/first", json={"client_id": "alice"}, timeout=120)
        assert nxt.status_code == 200 and nxt.json().get("id") != series_uid, nxt.text
        # Submit errors answer 4xx with one line: an unknown series, a label on another grid
        bad = nib.Nifti1Image(label[:, :, :-1].astype(np.uint8), img.affine).to_bytes()
        for image_id, data, status, words in (("1.2.3.4", body_label, 404, "unknown image"),
                                              (series_uid, bad, 400, "differs from the image's")):
            r = requests.put(f"{url}/datastore/label", params={"image": image_id}, timeout=120,
                             files={"label": ("label.nii", data, "application/octet-stream")},
                             data={"params": json.dumps({"label_info": [{"name": "lesion", "idx": 1}],
                                                         "client_id": "bob"})})
            assert r.status_code == status and words in r.json()["detail"], r.text
        r = requests.get(f"{url}/datastore/image", params={"image": "1.2.3.4"}, timeout=60)
        assert r.status_code == 404, r.text
        assert not left_behind(root / "tmp")  # the refused labels' uploads too
        # training from the raters' SEGs in the server: one rated patient is too few, said in one line
        r = requests.post(f"{url}/train/probunet", params={"run_sync": "true"}, json={"max_epochs": 1}, timeout=120)
        assert r.status_code == 400 and "1 patient(s) with raters' labels: the export needs at least 2" in r.text, \
            r.text


def test_dicomweb_series_headers_are_checked_as_the_cli_checks_them(orthanc, tmp_path):
    """MONAI Label's DICOMweb cache converts a series to NIfTI, keeping neither its modality nor its pixel spacing (1
    mm filled in) nor its gaps: the server checks the series' own headers before it reads the image, as the CLI does
    (422, one line naming the series): a series tagged MR, a slice without PixelSpacing, a missing slice (2-D
    mode too). A series without a Frame of Reference UID is answered as a label, and a DICOM SEG of it (which must
    reference one) is refused in one line (422), as a Submit of a label for it."""
    import sys

    import pydicom
    import requests

    sys.path.insert(0, str(REPO / "apps" / "monailabel" / "orthanc"))
    from make_ct_series import make_series, store

    def series(seed: int, change) -> str:
        files = make_series(tmp_path / f"s{seed}", slices=6, thickness=2.5, radius_mm=5.0, seed=seed)
        files = change(files) or files
        store(files, orthanc)
        return str(pydicom.dcmread(str(files[0])).SeriesInstanceUID)

    def edit(files, k, **tags):
        ds = pydicom.dcmread(str(files[k]))
        for tag, value in tags.items():
            if value is None:
                delattr(ds, tag)
            else:
                setattr(ds, tag, value)
        ds.save_as(str(files[k]))

    def tagged_mr(files):
        for k in range(len(files)):
            edit(files, k, Modality="MR")

    def no_frame_of_reference(files):
        for k in range(len(files)):
            edit(files, k, FrameOfReferenceUID=None)

    cases = [
        (series(21, tagged_mr), "has Modality 'MR'; this model segments CT (HU) only"),
        (series(22, lambda f: edit(f, 2, PixelSpacing=None)), "PixelSpacing None is missing or not positive"),
        (series(23, lambda f: f[:3] + f[4:]), "slice gaps are not uniform: 5 mm between"),
    ]
    unreferenceable = series(24, no_frame_of_reference)
    root = tmp_path / "label"
    root.mkdir()
    conf = {"model_path": MODEL, "network_config": CONFIG}
    with running_server(root, f"{orthanc}/dicom-web", conf) as (url, log):
        for uid, words in cases:
            for mode in ("2d", "3d"):
                r = requests.post(f"{url}/infer/probunet", params={"image": uid, "output": "json"}, timeout=300,
                                  data={"params": json.dumps({"foreground": [[60, 60, 2]], "mode": mode})})
                detail = r.json().get("detail", "")
                assert r.status_code == 422 and f"series {uid}" in detail and words in detail, (mode, r.text)
                assert "\n" not in detail and "Traceback" not in detail
        params = {"foreground": [[56, 64, 2]], "mode": "3d"}
        r = requests.post(f"{url}/infer/probunet", params={"image": unreferenceable, "output": "json"}, timeout=300,
                          data={"params": json.dumps(params)})
        assert r.status_code == 200 and r.json()["presence_label"]["name"], r.text
        words = "has no Frame of Reference UID (0020,0052), which a DICOM SEG of it must reference."
        for extra in ({"output": "dicom_seg"}, {"output": "json", "store_dicom_seg": True}):
            query = {"image": unreferenceable, "output": extra["output"]}
            r = requests.post(f"{url}/infer/probunet", params=query, timeout=300,
                              data={"params": json.dumps({**params, **extra})})
            detail = r.json().get("detail", "")
            assert r.status_code == 422 and words in detail and "\n" not in detail, (extra, r.text)
        image = requests.get(f"{url}/datastore/image", params={"image": unreferenceable}, timeout=120)
        (tmp_path / "unreferenceable.nii.gz").write_bytes(image.content)
        affine = nib.load(str(tmp_path / "unreferenceable.nii.gz")).affine  # a rater's label on the series' grid
        label = nib.Nifti1Image(np.zeros((128, 128, 6), np.uint8), affine).to_bytes()
        r = requests.put(f"{url}/datastore/label", params={"image": unreferenceable}, timeout=120,
                         files={"label": ("label.nii", label, "application/octet-stream")},
                         data={"params": json.dumps({"label_info": [{"name": "lesion", "idx": 1}],
                                                     "client_id": "alice"})})
        assert r.status_code == 422 and words in r.json()["detail"], r.text


def check_cached_as_monai_label_converts(root: Path, series_uid: str) -> None:
    """The app's NIfTI of a cached series equals, header and voxels, the one MONAI Label's own ``dicom_to_nifti`` makes
    of the same files (run in MONAI Label's venv), and the datastore records it as MONAI Label does."""
    import subprocess

    from tests.test_monailabel import VENV

    (cached,) = (root / "dicom_cache").rglob(f"{series_uid}.nii.gz")
    code = ("import sys; from monailabel.datastore.utils.convert import dicom_to_nifti; "
            "print(dicom_to_nifti(sys.argv[1]))")
    r = subprocess.run([str(VENV / "bin" / "python"), "-c", code, str(cached.with_name(series_uid))],
                       capture_output=True, text=True, timeout=300, check=True)
    theirs = Path(r.stdout.strip().splitlines()[-1])
    try:
        ours, ref = nib.load(str(cached)), nib.load(str(theirs))
        assert ours.header.binaryblock == ref.header.binaryblock
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
    finally:
        theirs.unlink()
    record = json.loads((cached.parent / "datastore_v2.json").read_text())["objects"][series_uid]
    assert record["image"]["ext"] == ".nii.gz" and record["image"]["info"]["SeriesInstanceUID"] == series_uid


def test_dicomweb_compressed_series(orthanc, tmp_path):
    """A series stored in JPEG 2000, as PACS often store CT (held-out real CT: pydicom's ``J2K_pixelrep_mismatch.dcm``,
    one oblique head slice): Orthanc without its GDCM plugin cannot transcode it to the uncompressed default that
    MONAI Label asks WADO-RS for (it answered 500, and the series could not be opened). The server fetches each
    series as stored: Slicer's download is the slice's HU, voxel for voxel; a click is answered (in 2-D: one slice),
    and as a DICOM SEG that references it."""
    import pydicom
    import requests
    from pydicom.data import get_testdata_file

    source = Path(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    ds = pydicom.dcmread(str(source))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # JPEG 2000, lossless only
    r = requests.post(f"{orthanc}/instances", data=source.read_bytes(), timeout=30)
    assert r.status_code == 200, r.text
    uid = str(ds.SeriesInstanceUID)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    root = tmp_path / "label"
    root.mkdir()
    with running_server(root, f"{orthanc}/dicom-web", {"model_path": MODEL, "network_config": CONFIG}) as (url, _):
        img, click = series_image_and_click(url, uid, ds, 300, 200, tmp_path)
        np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], hu.T)  # column x row, as MONAI loads it
        check_cached_as_monai_label_converts(root, uid)
        params = {"foreground": [click], "background": [], "label": "lesion", "num_samples": 16, "seed": 0}
        r = requests.post(f"{url}/infer/probunet", params={"image": uid, "output": "json"}, timeout=300,
                          data={"params": json.dumps(params)})
        assert r.status_code == 200 and r.json()["mode"] == "2d", r.text
        r = requests.post(f"{url}/infer/probunet", params={"image": uid, "output": "dicom_seg"}, timeout=300,
                          data={"params": json.dumps(params)})
        assert r.status_code == 200, r.text
        seg = pydicom.dcmread(io.BytesIO(r.content))
        assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        assert seg.FrameOfReferenceUID == ds.FrameOfReferenceUID and int(seg.NumberOfFrames) == 1
        series_dirs = [p for p in (root / "dicom_cache").rglob(f"*{uid}*") if p.is_dir()]
        assert [p.name for p in series_dirs] == [uid]  # the series folder, no partial download beside it


@contextlib.contextmanager
def refusing_any_transfer_syntax(upstream: str, port: int = 0, refuse: bool = True):
    """A loopback HTTP proxy (on ``port``; 0: a free one) in front of ``upstream`` (Orthanc) that behaves as a
    DICOMweb server older than the 2019 edition: a request whose ``Accept`` asks for ``transfer-syntax=*`` answers
    406 (``refuse=False``: passed on too), every other is passed on. Yields ``(url, accepts)``: ``accepts`` lists
    the ``Accept`` header of each series retrieval, in order."""
    import threading
    import urllib.error
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    accepts: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _forward(self) -> None:
            accept = self.headers.get("Accept", "")
            if re.search(r"/studies/[^/]+/series/[^/?]+$", urlparse(self.path).path):
                accepts.append(accept)
            if refuse and "transfer-syntax=*" in accept:
                self.send_response(406)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0)) or None
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "content-type")}
            request = urllib.request.Request(upstream + self.path, data=body, headers=headers, method=self.command)
            try:
                with urllib.request.urlopen(request, timeout=60) as r:
                    status, content, kind = r.status, r.read(), r.headers.get("Content-Type", "")
            except urllib.error.HTTPError as e:
                status, content, kind = e.code, e.read(), e.headers.get("Content-Type", "")
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = _forward

    server = ThreadingHTTPServer(("127.0.0.1", port), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", accepts
    finally:
        server.shutdown()
        server.server_close()


def test_a_dicomweb_server_that_is_down_is_said_at_start_and_answered_502_at_once(orthanc, tmp_path):
    """The DICOMweb server does not answer when the app starts (not started yet, a wrong port): one ERROR line at
    start, and 3D Slicer's requests answer 502 naming it at once (dicomweb-client's retries took 30 s and ended in
    500); once the server answers, the same requests are served."""
    import requests

    from tests.test_monailabel import _free_port

    slices = orthanc_series(orthanc, tmp_path / "series", slices=4, seed=43)
    uid = str(slices[0].SeriesInstanceUID)
    port = _free_port()  # nothing listens there until the proxy below
    pacs = f"http://127.0.0.1:{port}/dicom-web"
    said = f"the DICOMweb server {pacs} does not answer ([Errno 111] Connection refused); start it"
    conf = {"model_path": MODEL, "network_config": CONFIG, "warmup": "false"}
    with running_server(tmp_path, pacs, conf) as (url, log):
        errors = [line for line in log.read_text().splitlines() if "[ERROR]" in line]
        assert len(errors) == 1 and said in errors[0] and "Until then, 3D Slicer lists no image" in errors[0], errors
        info = requests.get(f"{url}/info/", timeout=60).json()  # Slicer connects: the model is listed
        assert "probunet" in info["models"] and said in info["datastore"]["problem"], info["datastore"]
        for method, path, kwargs in (("POST", "/activelearning/random", {"json": {}}),
                                     ("GET", "/datastore/image", {"params": {"image": uid}})):
            # said by the app's check before the request (one try); dicomweb-client's retries end in another answer
            r = requests.request(method, url + path, timeout=60, **kwargs)
            assert r.status_code == 502 and said in r.json()["detail"], r.text
        with refusing_any_transfer_syntax(orthanc, port=port, refuse=False):
            r = requests.post(f"{url}/activelearning/random", json={}, timeout=120)
            held = [s["0020000E"]["Value"][0] for s in requests.get(f"{orthanc}/dicom-web/series", timeout=30).json()]
            assert r.status_code == 200 and uid in held and r.json()["id"] in held, r.text  # other tests' series too
            r = requests.get(f"{url}/datastore/image", params={"image": uid}, timeout=120)
            assert r.status_code == 200 and nib.load(_save(r.content, tmp_path / "image.nii.gz")).shape[2] == 4
            assert requests.get(f"{url}/info/", timeout=60).json()["datastore"]["total"] >= 1


def test_a_dicomweb_server_that_refuses_the_apps_credentials_is_said_at_start_and_answered_502(tmp_path, monkeypatch):
    """A DICOMweb server that asks for a user and password (Orthanc started with ORTHANC_USER / ORTHANC_PASSWORD):
    without them (or with wrong ones) one ERROR line at start naming the variables to set, ``/info/`` still lists
    the model (MONAI Label answered it 500, so 3D Slicer could not connect) and the requests answer 502; with
    MONAI_LABEL_DICOMWEB_USERNAME / _PASSWORD the series opens."""
    import os

    import pydicom
    import pydicom.data
    import requests

    from tests.test_monailabel import _free_port

    if not _orthanc_installed():
        pytest.skip("Orthanc with its DICOMweb plugin is not installed: apt-get install -y orthanc orthanc-dicomweb")
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    uid = str(pydicom.dcmread(str(ct), stop_before_pixels=True).SeriesInstanceUID)
    port = _free_port()
    pacs = f"http://127.0.0.1:{port}"
    cmd = ["bash", str(ORTHANC_SCRIPT), str(tmp_path / "orthanc"), str(port)]
    env = {**os.environ, "ORTHANC_USER": "rad", "ORTHANC_PASSWORD": "s3cret"}
    conf = {"model_path": MODEL, "network_config": CONFIG, "warmup": "false"}
    said = (f"the DICOMweb server {pacs}/dicom-web refuses this app (401 Unauthorized): give the user and password it "
            "accepts in MONAI_LABEL_DICOMWEB_USERNAME and MONAI_LABEL_DICOMWEB_PASSWORD.")
    with background_server(cmd, f"{pacs}/system", tmp_path / "orthanc.log", 60, "Orthanc", probe_auth=("rad", "s3cret"),
                           env=env):  # fmt: skip
        assert requests.get(f"{pacs}/dicom-web/studies", timeout=10).status_code == 401
        stored = requests.post(f"{pacs}/instances", data=ct.read_bytes(), auth=("rad", "s3cret"), timeout=30)
        assert stored.status_code == 200, stored.text
        for password in (None, "wrong", "s3cret"):
            for key, value in (("USERNAME", "rad"), ("PASSWORD", password)):
                if password is None:
                    monkeypatch.delenv(f"MONAI_LABEL_DICOMWEB_{key}", raising=False)
                else:
                    monkeypatch.setenv(f"MONAI_LABEL_DICOMWEB_{key}", value)
            with running_server(tmp_path / f"ml_{password}", f"{pacs}/dicom-web", conf) as (url, log):
                errors = [line for line in log.read_text().splitlines() if "[ERROR]" in line]
                info = requests.get(f"{url}/info/", timeout=60).json()
                assert "probunet" in info["models"]
                r = requests.get(f"{url}/datastore/image", params={"image": uid}, timeout=120)
                if password != "s3cret":
                    assert len(errors) == 1 and said in errors[0], errors
                    assert info["datastore"]["problem"] == said and r.status_code == 502 and r.json()["detail"] == said
                else:
                    assert errors == [] and info["datastore"]["total"] == 1 and r.status_code == 200
                    assert nib.load(_save(r.content, tmp_path / "ct.nii.gz")).shape[:2] == (128, 128)


def _save(content: bytes, path: Path) -> str:
    path.write_bytes(content)
    return str(path)


def test_dicomweb_server_refusing_any_transfer_syntax(orthanc, tmp_path):
    """A DICOMweb server that refuses ``transfer-syntax=*`` (406, as servers before DICOMweb's 2019 edition may):
    the series is asked for again in the default transfer syntax, as MONAI Label asks, and opens whole; Slicer's
    download is the series' HU voxel for voxel and a click on it is answered."""
    import requests

    slices = orthanc_series(orthanc, tmp_path / "series", slices=6, seed=41)
    uid = str(slices[0].SeriesInstanceUID)
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices], axis=-1)
    root = tmp_path / "label"
    root.mkdir()
    with refusing_any_transfer_syntax(orthanc) as (proxy, accepts), running_server(
        root, f"{proxy}/dicom-web", {"model_path": MODEL, "network_config": CONFIG}
    ) as (url, _):
        img, click = series_image_and_click(url, uid, slices[0], 64, 56, tmp_path)
        assert len(accepts) == 2 and "transfer-syntax=*" in accepts[0] and "transfer-syntax=*" not in accepts[1]
        voxels = np.asarray(img.dataobj)
        np.testing.assert_array_equal(voxels.transpose(1, 0, 2), hu)  # column x row x slice, as MONAI loads it
        params = {"foreground": [click], "background": [], "label": "lesion", "num_samples": 16, "seed": 0}
        r = requests.post(f"{url}/infer/probunet", params={"image": uid, "output": "json"}, timeout=300,
                          data={"params": json.dumps(params)})
        assert r.status_code == 200 and r.json()["mode"] == "3d", r.text
    series_dirs = [p for p in (root / "dicom_cache").rglob(f"*{uid}*") if p.is_dir()]
    assert [p.name for p in series_dirs] == [uid] and len(list(series_dirs[0].iterdir())) == len(slices)


def test_dicomweb_uncertainty_ranks_a_pacs_over_several_requests(orthanc, tmp_path):
    """*Next Sample* (``uncertainty``) on a DICOMweb server scores a series by downloading it: each request scores at
    most ``max_images`` series not scored before, so the ranking grows by one series per request here until none is
    left, and a series once scored is not scored (downloaded, read) again."""
    import requests

    mine = {str(orthanc_series(orthanc, tmp_path / f"s{seed}", slices=4, seed=seed)[0].SeriesInstanceUID)
            for seed in (51, 52, 53)}  # fmt: skip
    root = tmp_path / "label"
    root.mkdir()
    with running_server(root, f"{orthanc}/dicom-web", {"model_path": MODEL, "network_config": CONFIG}) as (url, _):
        steps = []
        for _ in range(40):  # the other tests' series are in this Orthanc too
            r = requests.post(f"{url}/activelearning/uncertainty", json={"max_images": 1}, timeout=300)
            assert r.status_code == 200, r.text
            steps.append(r.json())
            if not steps[-1]["not_yet_scored"]:
                break
        done = [len(s["ranking"]) + len(s["not_scored"]) for s in steps]
        assert done == list(range(1, len(steps) + 1)), done  # one more series per request
        assert [len(s["not_yet_scored"]) for s in steps] == list(range(len(steps) - 1, -1, -1))
        assert mine <= {x["id"] for x in steps[-1]["ranking"]}
        again = requests.post(f"{url}/activelearning/uncertainty", json={"max_images": 1}, timeout=300).json()
        assert again["ranking"] == steps[-1]["ranking"] and again["not_yet_scored"] == []
