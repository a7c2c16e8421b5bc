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
