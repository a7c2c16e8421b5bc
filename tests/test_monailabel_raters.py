"""Several raters in the MONAI Label app: each rater's outline kept, exported as a multi-grader dataset, and the
model's disagreement ranking the images to outline next.

Server tests start a real `monailabel start_server` from the label venv (``MONAILABEL_VENV``, default
``.venv-label``) on a temporary studies folder and submit labels as 3D Slicer's "Submit Label" does
(``PUT /datastore/label?image=<id>`` with the label file and ``params`` holding the module's ``client_id``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.test_monailabel import MONAILABEL, REPO, pytestmark_server, running_server, write_test_model

S = 64
SHIPPED_MODEL = REPO / "bundle" / "models" / "model.pt"
AFFINE = np.array([[1.2, 0, 0, -10.0], [0, 1.2, 0, 5.0], [0, 0, 1.0, 2.0], [0, 0, 0, 1]])


def _disc(cy: int, cx: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:S, :S]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def _nifti_bytes(array: np.ndarray, affine: np.ndarray = AFFINE) -> bytes:
    img = nib.Nifti1Image(array, affine)
    return img.to_bytes()


def _gz(raw: bytes) -> bytes:
    import gzip

    return gzip.compress(raw)


def submit(url: str, image: str, mask: np.ndarray, params: dict | None = None, tag: str | None = None):
    """PUT /datastore/label as MONAILabelClient.save_label (3D Slicer's Submit) does."""
    import requests

    query = {"image": image, **({"tag": tag} if tag else {})}
    files = {"label": ("label.nii.gz", _gz(_nifti_bytes(mask)), "application/octet-stream")}
    return requests.put(f"{url}/datastore/label", params=query, files=files,
                        data={"params": json.dumps(params or {})}, timeout=60)


MASKS = {
    "alice": _disc(30, 32, 6),
    "bob": _disc(31, 33, 9),
    "carol": _disc(28, 30, 4),
    "dave": _disc(32, 32, 7),
}


@pytest.fixture(scope="module")
def rater_server(tmp_path_factory):
    """A server on five 2-D CT slices; raters alice, bob, carol, dave outline case1 (dave a second time as
    ``Dave``); alice (again as ``Alice``) and bob case2."""
    if not MONAILABEL.exists():
        pytest.skip(f"{MONAILABEL} does not exist: build it with `bash apps/monailabel/setup_venv.sh`")
    pytest.importorskip("requests")
    root = tmp_path_factory.mktemp("raters")
    studies = root / "studies"
    studies.mkdir()
    rng = np.random.default_rng(0)
    for i, (cy, cx, r, hu) in enumerate([(30, 32, 6, 30.0), (20, 40, 6, 30.0), (40, 20, 6, 30.0),
                                         (32, 32, 0, 0.0), (32, 32, 3, -500.0)]):
        img = (-850.0 + 15 * rng.standard_normal((S, S))).astype(np.float32)
        if r:
            img[_disc(cy, cx, r) > 0] = hu  # case4: lung only; case5: a faint small opacity
        nib.save(nib.Nifti1Image(img, AFFINE), str(studies / f"case{i + 1}.nii.gz"))
    if SHIPPED_MODEL.is_file():  # a trained model: the images' disagreement differs
        conf = {"model_path": SHIPPED_MODEL, "network_config": REPO / "bundle" / "configs" / "train.yaml"}
    else:
        model, config, _ = write_test_model(root)
        conf = {"model_path": model, "network_config": config}
    with running_server(root, str(studies), {**conf, "warmup": "false"}) as (url, log):
        replies = {}
        for name in ("alice", "bob", "carol"):  # Slicer: the rater's Client/User-ID arrives as client_id
            replies[name] = submit(url, "case1", MASKS[name], {"client_id": name, "label_info": [
                {"name": "lesion", "idx": 1}]})
            time.sleep(1.1)  # distinct submission seconds: the export orders graders by time
        replies["dave"] = submit(url, "case1", MASKS["dave"], tag="rater_dave")  # a REST client naming the tag
        replies["case1_Dave"] = submit(url, "case1", MASKS["dave"], {"client_id": "Dave"})  # dave again
        replies["eve"] = submit(url, "case1", MASKS["alice"], {"rater": "eve"})  # a 5th rater
        replies["case2_alice_first"] = submit(url, "case2", MASKS["carol"], {"rater": "alice"})
        replies["case2_alice"] = submit(url, "case2", MASKS["alice"], {"client_id": "Alice"})  # her outline again
        time.sleep(1.1)
        replies["case2_bob_first"] = submit(url, "case2", MASKS["bob"], {"rater": "bob"})
        replies["case2_bob"] = submit(url, "case2", np.zeros((S, S), np.uint8), {"rater": "bob"})  # reviewed: none
        yield url, {"root": root, "studies": studies, "replies": replies, "log": log}


# ------------------------------------------------------------------------------------------------ no server


def test_export_refuses_a_malformed_datastore_and_a_missing_studies_folder_in_one_line(tmp_path):
    def export(studies: Path, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "monai_probunet.data.raters", "--studies", str(studies),
                               "--out", str(out)], check=False, capture_output=True, text=True, timeout=120)

    for name, content in (("objects_list", {"objects": [1, 2]}),
                          ("no_image_key", {"objects": {"a": {"labels": {"rater_x": {"info": {}}}}}})):
        studies = tmp_path / name
        studies.mkdir()
        (studies / "datastore_v2.json").write_text(json.dumps(content))
        (studies / "labels" / "rater_x").mkdir(parents=True)  # the rater's label is there; the image entry is not
        (studies / "labels" / "rater_x" / "a.nii.gz").write_bytes(_gz(_nifti_bytes(MASKS["alice"])))
        proc = export(studies, tmp_path / "out")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "not a MONAI Label datastore file" in proc.stderr, proc.stderr
    proc = export(tmp_path / "nope", tmp_path / "out")
    assert proc.returncode == 2 and f"--studies {tmp_path / 'nope'} does not exist" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


def test_disagreement_ranks_ambiguous_above_clear_and_empty():
    from monai_probunet.metrics.disagreement import hypothesis_disagreement, presence_ambiguity, shape_disagreement

    empty = np.zeros((8, S, S), np.uint8)
    clear = np.stack([_disc(32, 32, 8)] * 7 + [_disc(32, 33, 8)])  # all agree: a lesion, nearly the same outline
    ambiguous = np.stack([_disc(32, 32, 4), _disc(30, 36, 7), _disc(34, 28, 5), _disc(32, 32, 9)]
                         + [np.zeros((S, S), np.uint8)] * 4)  # half see a lesion, outlines differ
    scores = [hypothesis_disagreement(x) for x in (ambiguous, clear, empty)]
    assert scores[0] > scores[1] > scores[2] == 0.0
    assert presence_ambiguity(ambiguous) == 1.0 and presence_ambiguity(clear) == 0.0
    # known answer: two lesion hypotheses, discs of 5 and 9 pixels radius sharing the centre: 1 - IoU = 1 - a/b
    pair = np.stack([_disc(32, 32, 5), _disc(32, 32, 9), np.zeros((S, S), np.uint8)])
    a, b = _disc(32, 32, 5).sum(), _disc(32, 32, 9).sum()
    assert shape_disagreement(pair) == pytest.approx(1 - a / b, abs=1e-6)
    assert hypothesis_disagreement(pair) == pytest.approx(0.5 * (4 * (2 / 3) * (1 / 3) + 1 - a / b), abs=1e-6)
    with pytest.raises(ValueError, match="binary"):
        hypothesis_disagreement(clear * 2)


# ------------------------------------------------------------------------------------------------ server


@pytestmark_server
def test_each_rater_kept_with_name_and_time(rater_server):
    import requests

    url, ctx = rater_server
    for key in ("alice", "bob", "carol", "dave", "case2_alice", "case2_bob_first", "case2_bob"):
        assert ctx["replies"][key].status_code == 200, (key, ctx["replies"][key].text)
    eve = ctx["replies"]["eve"]
    assert eve.status_code == 409 and "4 raters" in eve.json()["detail"], eve.text
    store = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()
    labels = store["objects"]["case1"]["labels"]
    assert sorted(t for t in labels if t.startswith("rater_")) == ["rater_alice", "rater_bob", "rater_carol",
                                                                    "rater_dave"]
    assert "final" not in labels  # Submit no longer replaces one shared label
    ts = [labels[f"rater_{n}"]["info"]["ts"] for n in ("alice", "bob", "carol")]
    assert ts == sorted(ts) and ts[0] < ts[2] and all(isinstance(t, (int, float)) and t > 0 for t in ts)
    for name in ("alice", "bob", "carol", "dave"):
        assert labels[f"rater_{name}"]["info"]["rater"] == name
        got = requests.get(f"{url}/datastore/label", params={"label": "case1", "tag": f"rater_{name}"}, timeout=30)
        assert got.status_code == 200
        arr = np.asarray(nib.Nifti1Image.from_bytes(_ungz(got.content)).dataobj)
        np.testing.assert_array_equal(arr.reshape(S, S), MASKS[name])
    case2 = store["objects"]["case2"]["labels"]
    assert sorted(case2) == ["rater_alice", "rater_bob"] and case2["rater_bob"]["info"]["lesion_voxels"] == 0


@pytestmark_server
def test_rater_names_match_case_insensitively(rater_server):
    """``Dave`` after ``dave`` is dave resubmitting, not a 5th rater; ``Alice``'s Submit replaces ``alice``'s outline
    (stored under the first spelling), not a third rater of case2."""
    import requests

    url, ctx = rater_server
    for key in ("case1_Dave", "case2_alice_first", "case2_alice"):
        assert ctx["replies"][key].status_code == 200, (key, ctx["replies"][key].text)
    assert "(alice, bob, carol, dave)" in ctx["replies"]["eve"].json()["detail"]
    objects = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    assert sorted(objects["case1"]["labels"]) == ["rater_alice", "rater_bob", "rater_carol", "rater_dave"]
    assert sorted(objects["case2"]["labels"]) == ["rater_alice", "rater_bob"]
    assert objects["case2"]["labels"]["rater_alice"]["info"]["rater"] == "alice"
    got = requests.get(f"{url}/datastore/label", params={"label": "case2", "tag": "rater_alice"}, timeout=30)
    np.testing.assert_array_equal(np.asarray(nib.Nifti1Image.from_bytes(_ungz(got.content)).dataobj), MASKS["alice"])


def _ungz(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


@pytestmark_server
def test_bad_submissions_refused(rater_server):
    url, _ = rater_server
    r = submit(url, "case3", MASKS["alice"], {})  # no rater name
    assert r.status_code == 400 and "rater" in r.json()["detail"]
    r = submit(url, "case3", MASKS["alice"] * 2, {"rater": "alice"})  # value 2: not the lesion value
    assert r.status_code == 400 and "values" in r.json()["detail"]
    r = submit(url, "case3", np.zeros((S, S + 1), np.uint8), {"rater": "alice"})
    assert r.status_code == 400 and "shape" in r.json()["detail"]
    r = submit(url, "case3", MASKS["alice"], {"rater": "al ice/.."})
    assert r.status_code == 400 and "rater name" in r.json()["detail"]
    r = submit(url, "nosuchimage", MASKS["alice"], {"rater": "alice"})
    assert 400 <= r.status_code < 500


@pytestmark_server
def test_default_client_id_layered_segmentation_and_bad_fields_refused(rater_server):
    """What a Slicer user can get wrong: Submit with the module's default Client/User-ID (everyone's who has not set
    one), Submit of the 16 hypotheses as the module saves them (overlapping segments: a 4-D .seg.nrrd), and form
    fields that are not JSON objects. Each answers 400 with one line; nothing is stored."""
    import requests

    from tests.test_monailabel_slicer import slicer_infer

    url, _ = rater_server
    r = submit(url, "case3", MASKS["alice"], {"client_id": "user-xyz", "label_info": [{"name": "lesion", "idx": 1}]})
    assert r.status_code == 400 and "Client/User-ID" in r.json()["detail"], r.text
    status, name, data, _ = slicer_infer(url, "probunet", "case3", {"foreground": [[40, 20, 0]], "slice": 0,
                                                                    "hypotheses": True, "num_samples": 4})
    assert status == 200 and name.endswith(".seg.nrrd") and b"kinds: list domain domain domain" in data
    r = requests.put(f"{url}/datastore/label", params={"image": "case3"}, timeout=60,
                     files={"label": ("case3.seg.nrrd", data, "application/octet-stream")},
                     data={"params": json.dumps({"client_id": "alice"})})
    assert r.status_code == 400 and "4 overlapping segments" in r.json()["detail"], r.text
    r = requests.put(f"{url}/datastore/label", params={"image": "case3"}, data={"params": "nope"}, timeout=60,
                     files={"label": ("label.nii.gz", _gz(_nifti_bytes(MASKS["alice"])), "application/octet-stream")})
    assert r.status_code == 400 and "'params' must be a JSON object" in r.json()["detail"], r.text
    r = requests.put(f"{url}/datastore/image/info", params={"image": "case3"}, data={"info": "[1, 2]"}, timeout=30)
    assert r.status_code == 400 and "'info' must be a JSON object" in r.json()["detail"], r.text
    store = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()
    assert store["objects"]["case3"]["labels"] == {}


@pytestmark_server
def test_export_writes_multi_grader_dataset(rater_server, tmp_path):
    from monai_probunet.data import prepare_dataset

    _, ctx = rater_server
    out = tmp_path / "dataset"
    proc = subprocess.run([sys.executable, "-m", "monai_probunet.data.raters", "--studies", str(ctx["studies"]),
                           "--out", str(out)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    datalist = prepare_dataset("folder", out)  # the project's validation of every case
    content = json.loads(Path(datalist).read_text())
    assert content["num_graders"] == 4
    cases = {c["case_id"]: c for s in ("training", "validation", "test") for c in content[s]}
    assert sorted(cases) == ["case1", "case2"]  # case3: no rater yet
    assert len(content["training"]) == 1 and len(content["validation"]) == 1  # patient-level, both non-empty
    assert cases["case1"]["raters"] == ["alice", "bob", "carol", "dave"]
    assert cases["case2"]["raters"] == ["alice", "bob", "alice", "bob"]  # 2 raters fill 4 slots in turn
    expected = {"case1": [MASKS[n] for n in ("alice", "bob", "carol", "dave")],
                "case2": [MASKS["alice"], np.zeros((S, S), np.uint8)] * 2}
    for cid, masks in expected.items():
        img = nib.load(str(out / cases[cid]["image"]))
        src = nib.load(str(ctx["studies"] / f"{cid}.nii.gz"))
        np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(src.dataobj))
        np.testing.assert_allclose(img.affine, AFFINE)
        for g, (path, mask) in enumerate(zip(cases[cid]["label"], masks)):
            assert path == f"labels/{cid}_g{g}.nii.gz"
            np.testing.assert_array_equal(np.asarray(nib.load(str(out / path)).dataobj), mask)
    # an earlier export is replaced; a folder of someone else's files is refused, untouched, exit code 2
    assert subprocess.run([sys.executable, "-m", "monai_probunet.data.raters", "--studies", str(ctx["studies"]),
                           "--out", str(out)], check=False, capture_output=True, timeout=120).returncode == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    proc = subprocess.run([sys.executable, "-m", "monai_probunet.data.raters", "--studies", str(ctx["studies"]),
                           "--out", str(mine)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "did not generate" in proc.stderr
    assert "Give a new or empty --out" in proc.stderr and "--dataset_name" not in proc.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


@pytestmark_server
def test_uncertainty_strategy_ranks_unlabelled_images_by_disagreement(rater_server):
    import requests

    from monai_probunet.inference import find_presence_threshold, load_model, predict_hypotheses
    from monai_probunet.metrics.disagreement import hypothesis_disagreement

    url, ctx = rater_server
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert "uncertainty" in info["strategies"]
    # case5's lesion centre given as image info; the others are scored at their grid centre
    r = requests.put(f"{url}/datastore/image/info", params={"image": "case5"}, data={"info": json.dumps(
        {"center": [32, 32]})}, timeout=30)
    assert r.status_code == 200, r.text
    r = requests.post(f"{url}/activelearning/uncertainty", json={"num_samples": 8, "seed": 3}, timeout=300)
    assert r.status_code == 200, r.text
    reply = r.json()
    ranking = reply["ranking"]
    assert sorted(x["id"] for x in ranking) == ["case3", "case4", "case5"]  # the images no rater outlined
    assert [x["score"] for x in ranking] == sorted((x["score"] for x in ranking), reverse=True)
    assert reply["id"] == ranking[0]["id"] and reply["score"] == ranking[0]["score"]
    # the scores are the library's disagreement of the model's hypotheses at the same centre
    model = SHIPPED_MODEL if SHIPPED_MODEL.is_file() else ctx["root"] / "model.pt"
    config = REPO / "bundle" / "configs" / "train.yaml" if SHIPPED_MODEL.is_file() else ctx["root"] / "net.yaml"
    net, settings = load_model(str(model), str(config))
    for x in ranking:
        center = [32, 32] if x["id"] == "case5" else [31, 31]
        hyp = predict_hypotheses(str(ctx["studies"] / f"{x['id']}.nii.gz"), center, net,
                                 spacing=settings["spacing"], roi_size=settings["roi_size"], num_samples=8, seed=3,
                                 threshold=find_presence_threshold(str(model)), hu_window=settings["hu_window"])
        assert x["score"] == pytest.approx(hypothesis_disagreement(np.asarray(hyp.labels)), abs=1e-5), x
    assert reply["not_scored"] == []
    for bad, key in (({"num_samples": 1}, "num_samples"), ({"num_samples": "abc"}, "num_samples"),
                     ({"seed": -5}, "seed")):
        r = requests.post(f"{url}/activelearning/uncertainty", json=bad, timeout=60)
        assert r.status_code == 400 and key in r.json()["detail"], r.text
    r = requests.post(f"{url}/activelearning/nosuch", json={}, timeout=60)
    assert r.status_code == 404 and "uncertainty" in r.json()["detail"], r.text
    # an image whose centre info lies outside it cannot be scored: left out of the ranking, and the reply says why
    r = requests.put(f"{url}/datastore/image/info", params={"image": "case4"}, data={"info": json.dumps(
        {"center": [500, 500]})}, timeout=30)
    assert r.status_code == 200, r.text
    reply = requests.post(f"{url}/activelearning/uncertainty", json={"num_samples": 8, "seed": 3}, timeout=300).json()
    assert sorted(x["id"] for x in reply["ranking"]) == ["case3", "case5"]
    assert [x["id"] for x in reply["not_scored"]] == ["case4"] and "500" in reply["not_scored"][0]["reason"]
    # at most max_images images not scored before per request (a PACS is ranked over several requests): seed 4
    # has scored nothing yet; each request scores the next image in id order and answers the best so far
    replies = [requests.post(f"{url}/activelearning/uncertainty", json={"num_samples": 8, "seed": 4,
                                                                         "max_images": 1}, timeout=300)
               for _ in range(3)]  # fmt: skip
    assert [r.status_code for r in replies] == [200, 200, 200], [r.text for r in replies]
    steps = [r.json() for r in replies]
    assert [sorted(x["id"] for x in step["ranking"]) for step in steps] == [["case3"], ["case3"], ["case3", "case5"]]
    assert [step["not_yet_scored"] for step in steps] == [["case4", "case5"], ["case5"], []]
    assert [[x["id"] for x in step["not_scored"]] for step in steps] == [[], ["case4"], ["case4"]]
    assert steps[2]["id"] == steps[2]["ranking"][0]["id"]
    r = requests.post(f"{url}/activelearning/uncertainty", json={"max_images": 0}, timeout=60)
    assert r.status_code == 400 and "max_images" in r.json()["detail"], r.text


@pytestmark_server
def test_next_sample_offers_an_image_to_each_rater_until_it_has_max_raters(rater_server):
    """Next Sample as 3D Slicer asks for it (``POST /activelearning/<strategy>``, the module's Client/User-ID as
    ``client_id`` in the JSON body): case1 has its 4 raters and is offered to no one; case2 (alice, bob) is offered
    to carol and to a new rater, not to alice or bob (names match case-insensitively); without a rater, or with the
    module's default ``user-xyz``, only the images nobody outlined (case3-5)."""
    import requests

    url, _ = rater_server

    def next_sample(strategy: str, body: dict) -> dict:
        r = requests.post(f"{url}/activelearning/{strategy}", json=body, timeout=300)
        assert r.status_code == 200, r.text
        return r.json()

    for body, want in (({"client_id": "carol"}, "case2"), ({"client_id": "Carol"}, "case2"),
                       ({"rater": "eve", "client_id": "user-xyz"}, "case2"), ({"client_id": "alice"}, "case3"),
                       ({"client_id": "BOB"}, "case3"), ({"client_id": "user-xyz"}, "case3"), ({}, "case3")):
        assert next_sample("first", body)["id"] == want, body
    for rater, offered in (("carol", {"case2", "case3", "case4", "case5"}), ("alice", {"case3", "case4", "case5"})):
        time.sleep(1.1)  # MONAI Label's random weighs each image by the seconds since it chose it (all 0: 500)
        assert next_sample("random", {"client_id": rater})["id"] in offered, rater
        reply = next_sample("uncertainty", {"client_id": rater, "num_samples": 8, "seed": 3})
        ranked = {x["id"] for x in reply["ranking"]}
        assert ranked | {x["id"] for x in reply["not_scored"]} | set(reply["not_yet_scored"]) == offered, reply
        assert reply["id"] in ranked and reply["id"] == reply["ranking"][0]["id"]
    objects = requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()["objects"]
    assert len(objects["case1"]["labels"]) == 4 and all(not objects[f"case{i}"]["labels"] for i in (3, 4, 5))
