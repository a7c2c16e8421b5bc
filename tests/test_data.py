"""The on-disk format, the built-in shapes dataset, patient-level splits and the grader transform."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.transforms import LoadImaged

from monai_probunet.data import (
    LESION_TYPES,
    RandGraderd,
    load_datalist,
    patient_level_split,
    prepare_dataset,
    render_shapes_case,
)


def test_shapes_dataset_format(tiny_shapes):
    content = json.loads(tiny_shapes.read_text())
    splits = {s: content[s] for s in ("training", "validation", "test")}
    assert sum(len(v) for v in splits.values()) == 48
    patients = {s: {c["patient_id"] for c in v} for s, v in splits.items()}
    assert not (patients["training"] & patients["validation"]) and not (patients["training"] & patients["test"])
    assert not (patients["validation"] & patients["test"])
    item = load_datalist(tiny_shapes, "training")[0]
    assert len(item["label"]) == 4 and abs(sum(item["mode_probs"]) - 1) < 1e-9
    data = LoadImaged(keys=["image", "label", "modes"], image_only=True, ensure_channel_first=True)(item)
    assert data["image"].shape == (1, 32, 32) and data["label"].shape == (4, 32, 32)
    assert data["image"].min() < -700  # HU: lung parenchyma
    # every grader mask is one of the image's modes (the known distribution)
    modes = data["modes"]
    for g in data["label"]:
        assert any(torch.equal(g, m) for m in modes)


def test_shapes_modes_match_declared_types():
    rng = np.random.default_rng(0)
    for name, (_, modes) in LESION_TYPES.items():
        image, masks, probs = render_shapes_case(rng, 48, name)
        assert image.shape == (48, 48) and len(masks) == len(modes) and probs == [p for _, p in modes]
        areas = [int(m.sum()) for m in masks]
        assert (areas[0] == 0) == (modes[0][0] == "empty")
        if name in ("solid_halo", "faint_halo", "satellite"):
            assert areas[-1] > areas[-2] > 0  # the larger variant contains more pixels


def test_generation_is_cached_and_deterministic(tmp_path):
    a = prepare_dataset("shapes", tmp_path / "a", seed=1, num_patients=6, images_per_patient=1, image_size=16)
    b = prepare_dataset("shapes", tmp_path / "b", seed=1, num_patients=6, images_per_patient=1, image_size=16)
    ja, jb = json.loads(open(a).read()), json.loads(open(b).read())
    assert ja == jb
    img_a = (tmp_path / "a" / ja["training"][0]["image"]).read_bytes()
    mtime = (tmp_path / "a" / "datalist.json").stat().st_mtime_ns
    assert prepare_dataset("shapes", tmp_path / "a", seed=1, num_patients=6, images_per_patient=1, image_size=16) == a
    assert (tmp_path / "a" / "datalist.json").stat().st_mtime_ns == mtime  # cached: not regenerated
    assert (tmp_path / "b" / jb["training"][0]["image"]).read_bytes() == img_a
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folders left


def test_unknown_dataset_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset name 'nope'.*shapes"):
        prepare_dataset("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="datalist.json"):
        prepare_dataset("folder", tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "datalist.json").write_text(json.dumps({"training": [{"image": "x.nii.gz"}], "validation": [{"image": "y", "label": ["z"]}]}))
    with pytest.raises(ValueError, match=r"training\[0\] must be an object with 'image' and 'label'"):
        prepare_dataset("folder", tmp_path / "bad")


def test_patient_level_split_is_seeded_and_disjoint():
    patients = [f"P{i:03d}" for i in range(100)] * 3
    a = patient_level_split(patients, (0.7, 0.15, 0.15), seed=5)
    assert a == patient_level_split(list(reversed(patients)), (0.7, 0.15, 0.15), seed=5)
    assert a != patient_level_split(patients, (0.7, 0.15, 0.15), seed=6)
    counts = {s: sum(v == s for v in a.values()) for s in ("training", "validation", "test")}
    assert counts == {"training": 70, "validation": 15, "test": 15}
    b = patient_level_split(patients, (72, 14, 14), seed=0)
    assert sorted(b.values()).count("validation") == 14


def test_rand_grader_draws_each_grader():
    stack = torch.arange(4).view(4, 1, 1).expand(4, 2, 2).clone()
    t = RandGraderd(keys="label")
    t.set_random_state(seed=0)
    picks = [int(t({"label": stack})["label"][0, 0, 0]) for _ in range(400)]
    assert t({"label": stack})["label"].shape == (1, 2, 2)
    freq = np.bincount(picks, minlength=4) / 400
    assert np.all(np.abs(freq - 0.25) < 0.08)
    t.set_random_state(seed=0)
    assert [int(t({"label": stack})["label"][0, 0, 0]) for _ in range(400)] == picks
