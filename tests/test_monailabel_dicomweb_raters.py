"""A team of raters on a PACS: MONAI Label on a DICOMweb server (a real Orthanc), driven as 3D Slicer's module
drives it (``POST /activelearning/first`` with its ``client_id``; Submit Label: ``PUT /datastore/label?image=<series>``
with the labelmap and ``params`` = ``{"label_info", "model", "client_id"}``).

Every rater's Submit is a DICOM SEG in the server (ContentCreatorName = the rater) and counts as that rater's, as on
a local studies folder: a resubmit replaces only the rater's own label, a fifth rater is refused, *Next Sample*
offers each rater the series they have not outlined until it has ``max_raters``, and the inter-rater view reads
every rater's SEG, also from a second server with an empty cache. Slow: starts Orthanc and two MONAI Label servers.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path
from urllib.parse import quote_plus

import nibabel as nib
import numpy as np
import pytest

from tests.test_monailabel import MONAILABEL, running_server
from tests.test_monailabel_slicer import CONFIG, MODEL, orthanc, orthanc_series, slicer_put  # noqa: F401 -- fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MONAILABEL.exists(),
                       reason=f"{MONAILABEL} does not exist: build it with `bash apps/monailabel/setup_venv.sh`"),
]


def next_sample(url: str, client_id: str) -> str | None:
    """3D Slicer's Next Sample (strategy ``first``: the first of the series offered, in UID order)."""
    import requests

    r = requests.post(f"{url}/activelearning/first", json={"client_id": client_id}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json().get("id")


def submit(url: str, series: str, mask: np.ndarray, affine: np.ndarray, client_id: str) -> tuple[int, str]:
    """3D Slicer's Submit Label of ``mask`` (value 1, segment ``lesion``) on the series' grid."""
    params = {"label_info": [{"name": "lesion", "idx": 1}], "model": "probunet", "client_id": client_id}
    return slicer_put(url, f"/datastore/label?image={quote_plus(series)}", params, "label", "tmplabel.nii.gz",
                      gzip.compress(nib.Nifti1Image(mask, affine).to_bytes()))


def raters_view(url: str, series: str) -> dict:
    import requests

    r = requests.post(f"{url}/infer/probunet_raters", params={"image": series, "output": "json"},
                      data={"params": json.dumps({"num_samples": 4, "seed": 0})}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def rater_segs(orthanc_url: str) -> dict[str, list[str]]:
    """``{ContentCreatorName: [referenced series, ...]}`` of the SEGs Orthanc holds (read from the files)."""
    import pydicom
    import requests

    out: dict[str, list[str]] = {}
    found = requests.post(f"{orthanc_url}/tools/find", json={"Level": "Instance", "Query": {"Modality": "SEG"}},
                          timeout=30).json()
    for instance in found:
        ds = pydicom.dcmread(io.BytesIO(requests.get(f"{orthanc_url}/instances/{instance}/file", timeout=30).content))
        referenced = str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
        out.setdefault(str(ds.get("ContentCreatorName", "")), []).append(referenced)
    return out


def test_a_team_of_raters_on_a_pacs(orthanc, tmp_path):  # noqa: F811 -- the fixture
    import requests

    first, second = sorted(str(orthanc_series(orthanc, tmp_path / f"s{k}", slices=6, seed=60 + k)[0].SeriesInstanceUID)
                           for k in range(2))
    conf = {"model_path": MODEL, "network_config": CONFIG, "warmup": "false"}
    (tmp_path / "a").mkdir()
    with running_server(tmp_path / "a", f"{orthanc}/dicom-web", conf) as (url, _):
        r = requests.get(f"{url}/datastore/image", params={"image": first}, timeout=120)
        (tmp_path / "first.nii.gz").write_bytes(r.content)
        img = nib.load(str(tmp_path / "first.nii.gz"))
        masks = {}
        for k, name in enumerate(["alice", "bob", "carol", "dave"]):
            masks[name] = np.zeros(img.shape, np.uint8)
            masks[name][30 + 5 * k:60, 30:60 + 5 * k, 1:5] = 1
        masks["dave"][:] = 0  # a rater who saw no lesion

        # the first rater is offered the first series, then the second; the second rater still the first
        assert next_sample(url, "alice") == first
        status, text = submit(url, first, masks["alice"], img.affine, "alice")
        assert status == 200, text
        assert next_sample(url, "alice") == second
        assert next_sample(url, "bob") == first
        status, text = submit(url, first, masks["bob"], img.affine, "bob")
        assert status == 200, text
        # a resubmit (names match case-insensitively) replaces only that rater's own label
        masks["alice"] = np.zeros(img.shape, np.uint8)
        masks["alice"][20:40, 20:40, 2:4] = 1
        status, text = submit(url, first, masks["alice"], img.affine, "Alice")
        assert status == 200, text
        for name in ("carol", "dave"):
            status, text = submit(url, first, masks[name], img.affine, name)
            assert status == 200, text
        # a fifth rater: 409 in one line naming the four; 3D Slicer's default Client/User-ID: 400
        status, text = submit(url, first, masks["bob"], img.affine, "eve")
        assert status == 409 and "already has 4 raters (alice, bob, carol, dave)" in json.loads(text)["detail"], text
        status, text = submit(url, first, masks["bob"], img.affine, "user-xyz")
        assert status == 400 and "Client/User-ID" in text, text
        assert next_sample(url, "eve") == second and next_sample(url, "carol") == second

        # every SEG stays in the PACS, each the rater's (alice's two), none of eve's
        held = rater_segs(orthanc)
        assert {k: sorted(v) for k, v in held.items()} == {
            "alice": [first, first], "bob": [first], "carol": [first], "dave": [first]}
        # what the app uses: each rater's latest label, listed under rater_<name>
        listed = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"][first]
        assert sorted(t for t in listed["labels"] if t.startswith("rater_")) == [
            "rater_alice", "rater_bob", "rater_carol", "rater_dave"]
        r = requests.get(f"{url}/datastore/label", params={"label": first, "tag": "rater_alice"}, timeout=60)
        assert r.status_code == 200, r.text
        (tmp_path / "alice.nii.gz").write_bytes(r.content)
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "alice.nii.gz")).dataobj), masks["alice"])
        view = raters_view(url, first)
        assert {r["rater"]: r["lesion_voxels"] for r in view["raters"]} == {n: int(m.sum()) for n, m in masks.items()}

    # a second server with an empty cache (a restart, another workstation) finds every rater in the PACS
    (tmp_path / "b").mkdir()
    with running_server(tmp_path / "b", f"{orthanc}/dicom-web", conf) as (url, _):
        assert raters_view(url, first)["raters"] == view["raters"]
        assert next_sample(url, "bob") == second and next_sample(url, "frank") == second
        status, text = submit(url, first, masks["bob"], img.affine, "Eve")
        assert status == 409, text
        assert next_sample(url, "ALICE") == second
        status, text = submit(url, second, masks["bob"], img.affine, "frank")
        assert status == 200, text
        assert next_sample(url, "frank") is None and next_sample(url, "bob") == second


def test_train_on_a_pacs(orthanc, tmp_path):  # noqa: F811 -- the fixture
    """Train on a DICOMweb datastore: every rater's SEG read into the cache, the series' crops exported with
    patient-level splits by PatientID, one epoch, the comparison (before: refused)."""
    import pydicom
    import requests

    from tests.test_monailabel_train import TINY_NET, _untrained_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "apps" / "monailabel" / "orthanc"))
    from make_ct_series import make_series, store

    series = []
    for k, patient in enumerate(("PACS-P1", "PACS-P2")):
        files = make_series(tmp_path / f"s{k}", slices=6, seed=80 + k)
        for f in files:  # two patients (CT_small.dcm's own PatientID is one)
            ds = pydicom.dcmread(str(f))
            ds.PatientID = patient
            ds.save_as(str(f))
        store(files, orthanc)
        series.append(str(pydicom.dcmread(str(files[0])).SeriesInstanceUID))
    (tmp_path / "tiny.yaml").write_text(TINY_NET)
    configs = [str(CONFIG), str(tmp_path / "tiny.yaml")]
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    _untrained_model(model, configs)
    conf = {"model_path": model, "network_config": ",".join(configs), "warmup": "false"}
    (tmp_path / "a").mkdir()
    with running_server(tmp_path / "a", f"{orthanc}/dicom-web", conf) as (url, log):
        for uid in series:
            r = requests.get(f"{url}/datastore/image", params={"image": uid}, timeout=120)
            (tmp_path / "img.nii.gz").write_bytes(r.content)
            img = nib.load(str(tmp_path / "img.nii.gz"))
            for k, name in enumerate(["alice", "bob", "carol"]):  # 3-D outlines of the lesion, slices 1..4
                mask = np.zeros(img.shape, np.uint8)
                mask[50 - 2 * k:70 + 2 * k, 45 - 2 * k:65 + 2 * k, 1 + (k == 0):5] = 1
                status, text = submit(url, uid, mask, img.affine, name)
                assert status == 200, text
        r = requests.post(f"{url}/train/probunet", params={"run_sync": "true"}, json={"max_epochs": 1},
                          timeout=600)
        assert r.status_code == 200, r.text
        result = r.json()
        server_log = Path(log).read_text()
    assert "new model" in server_log and f"validation GED {result['new_ged']:.4f}" in server_log
    stats = json.loads((tmp_path / "a" / "app" / "model" / "probunet_train" / "train_stats.json").read_text())
    datalist = json.loads((Path(stats["export"]) / "datalist.json").read_text())
    # the PACS may hold other rated series (this module's other test): this test's are its two patients'
    entries = [e for s in ("training", "validation", "test") for e in datalist[s] if e["image_id"] in series]
    # one crop per slice of the outline (slices 1..4) and series; alice's misses slice 1: an empty grader there
    assert sorted((e["image_id"], e["slice_index"]) for e in entries) == sorted(
        (uid, k) for uid in series for k in range(1, 5))
    assert {e["image_id"]: e["patient_id"] for e in entries} == dict(zip(series, ("PACS-P1", "PACS-P2")))
    assert all(e["raters"][:3] == ["alice", "bob", "carol"] and e["num_raters"] == 3 for e in entries)
    first_slice = [e for e in entries if e["slice_index"] == 1]
    export = Path(stats["export"])
    for e in first_slice:
        sums = [int(np.asarray(nib.load(str(export / p)).dataobj).sum()) for p in e["label"][:3]]
        assert sums[0] == 0 and min(sums[1:]) > 0, sums
    assert result["num_images"] == len(datalist["validation"]) > 0
