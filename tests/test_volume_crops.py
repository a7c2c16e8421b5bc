"""Rated CT volumes -> the model's 2-D training crops (monai_probunet.data.volume_crops through the raters' export).

Known answer: a synthetic volume at 0.5 x 0.5 x 2 mm, stored with its first axis to the patient's right (the model's
grid is LPS: the crops are turned), holds an ellipsoid lesion outlined by three raters with different extents and a
small second lesion outlined by one. On the model's 1 mm grid every crop pixel lies on a voxel centre of the volume,
so each crop's expected values are the volume's own voxels there: the raters' masks (0 beyond the volume) and the
image's HU (the border voxel repeated beyond it).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_probunet.data.disk_format import DatasetError
from monai_probunet.data.raters import export_rater_dataset

SHAPE = (80, 72, 16)
SPACING = (0.5, 0.5, 2.0)
#: first axis to the patient's right (RAS x decreasing), second anterior, third superior
AFFINE = np.array([[-0.5, 0, 0, 30.0], [0, 0.5, 0, -20.0], [0, 0, 2.0, 100.0], [0, 0, 0, 1]])
MODEL_SPACING, ROI = (1.0, 1.0), (32, 32)
CENTRE_A, RADII_A = (40, 36, 8), (8.0, 6.0, 5.0)  # voxel, mm
RATERS = {"alice": 0.6, "bob": 1.0, "carol": 1.4}  # lesion A's radii times this
CENTRE_B, RADIUS_B = (14, 12, 3), 3.0  # lesion B, bob's only, near the volume's corner


def _ellipsoid(centre, radii) -> np.ndarray:
    idx = np.indices(SHAPE).astype(float)
    return (sum(((idx[a] - centre[a]) * SPACING[a] / radii[a]) ** 2 for a in range(3)) <= 1).astype(np.uint8)


def _image() -> np.ndarray:
    i, j, k = np.indices(SHAPE).astype(np.float32)
    hu = -900.0 + 3.0 * i + 2.0 * j + 0.5 * k  # every voxel differs: a shift or flip shows
    hu[_ellipsoid(CENTRE_A, RADII_A) > 0] = 40.0
    return hu.astype(np.float32)


def _masks() -> dict[str, np.ndarray]:
    masks = {name: _ellipsoid(CENTRE_A, [r * f for r in RADII_A]) for name, f in RATERS.items()}
    masks["bob"] = masks["bob"] | _ellipsoid(CENTRE_B, [RADIUS_B] * 3)
    return masks


def _slices_spanned(centre_k: int, radius_mm: float) -> list[int]:
    """The slices whose voxel centre lies within the radius along z (the ellipsoid's centre voxel is in each)."""
    return [k for k in range(SHAPE[2]) if abs(k - centre_k) * SPACING[2] <= radius_mm]


def _studies(root: Path, volumes: dict[str, dict], affine: np.ndarray = AFFINE) -> Path:
    """A MONAI Label local datastore as the app writes it: images, ``labels/rater_<name>/`` and datastore_v2.json."""
    studies = root / "studies"
    objects = {}
    for image_id, v in volumes.items():
        (studies / "labels").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(v["image"], affine), str(studies / f"{image_id}.nii.gz"))
        labels = {}
        for ts, (name, mask) in enumerate(v["masks"].items(), start=1):
            (studies / "labels" / f"rater_{name}").mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(mask, v.get("mask_affine", affine)),
                     str(studies / "labels" / f"rater_{name}" / f"{image_id}.nii.gz"))
            labels[f"rater_{name}"] = {"ext": ".nii.gz", "info": {"rater": name, "ts": 1000 + ts}}
        objects[image_id] = {"image": {"ext": ".nii.gz", "info": {"patient_id": v["patient"]}}, "labels": labels}
    (studies / "datastore_v2.json").write_text(json.dumps({"name": "t", "images_dir": ".", "labels_dir": "labels",
                                                           "objects": objects}))
    return studies


def _source_voxels(crop_affine: np.ndarray) -> np.ndarray:
    """``H x W x 3`` voxel coordinates of the volume at the crop's pixel centres."""
    i, j = np.meshgrid(np.arange(ROI[0]), np.arange(ROI[1]), indexing="ij")
    pts = np.stack([i, j, np.zeros_like(i), np.ones_like(i)], -1).reshape(-1, 4).T.astype(float)
    return (np.linalg.inv(AFFINE) @ crop_affine @ pts)[:3].T.reshape(ROI[0], ROI[1], 3)


def test_volume_export_known_answer(tmp_path):
    image, masks = _image(), _masks()
    other = {"alice": masks["alice"], "bob": masks["bob"]}  # a second patient, rated by two of the three
    studies = _studies(tmp_path, {"vol1": {"image": image, "masks": masks, "patient": "p1"},
                                  "vol2": {"image": image, "masks": other, "patient": "p2"}})
    out = tmp_path / "export"
    datalist = json.loads(export_rater_dataset(studies, out, spacing=MODEL_SPACING, roi_size=ROI).read_text())
    entries = [e for s in ("training", "validation", "test") for e in datalist[s]]
    assert datalist["num_graders"] == 3 and datalist["generator"]["params"]["roi_size"] == list(ROI)

    # one crop per lesion and slice it spans: lesion A (the union: carol's extent), lesion B (bob's)
    want_a = _slices_spanned(CENTRE_A[2], RADII_A[2] * RATERS["carol"])
    want_b = _slices_spanned(CENTRE_B[2], RADIUS_B)
    assert want_a == list(range(5, 12)) and want_b == [2, 3, 4]
    for image_id in ("vol1", "vol2"):
        mine = [e for e in entries if e["image_id"] == image_id]
        spanned = want_a if image_id == "vol1" else _slices_spanned(CENTRE_A[2], RADII_A[2])  # vol2: bob's extent
        got = sorted((e["lesion"], e["slice_index"]) for e in mine)
        # scipy numbers the lesions in scan order: B (its voxels start at a lower first index) is 1, A is 2
        assert got == sorted([(1, k) for k in want_b] + [(2, k) for k in spanned]), got

    for e in entries:
        vol_masks = masks if e["image_id"] == "vol1" else other
        assert e["raters"] == (["alice", "bob", "carol"] if e["image_id"] == "vol1" else ["alice", "bob", "alice"])
        crop = nib.load(str(out / e["image"]))
        assert crop.shape == ROI
        affine = crop.affine
        # the model's grid: 1 mm, turned to LPS, on the lesion's slice
        assert nib.aff2axcodes(affine) == ("L", "P", "S")
        np.testing.assert_allclose(np.linalg.norm(affine[:3, :2], axis=0), MODEL_SPACING, atol=1e-6)
        vox = _source_voxels(affine)
        np.testing.assert_allclose(vox, np.round(vox), atol=1e-4)  # every crop pixel on a voxel centre
        vox = np.round(vox).astype(int)
        assert (vox[..., 2] == e["slice_index"]).all()
        # centred on the lesion: the crop's centre pixel within half a pixel (one voxel) of the lesion's centre
        centre = CENTRE_A if e["lesion"] == 2 else CENTRE_B
        assert np.abs(vox[ROI[0] // 2, ROI[1] // 2, :2] - centre[:2]).max() <= 1
        np.testing.assert_allclose(e["centre_ras"], (AFFINE @ [*centre[:2], e["slice_index"], 1])[:3], atol=1e-3)
        inside = np.all((vox >= 0) & (vox < SHAPE), axis=-1)
        clamped = np.clip(vox, 0, np.array(SHAPE) - 1)
        # the image: the volume's HU where the crop lies on it; beyond, the nearest such pixel repeated
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        assert inside[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
        on_volume = image[tuple(clamped.transpose(2, 0, 1))]
        near = np.ix_(np.clip(np.arange(ROI[0]), rows.min(), rows.max()), np.clip(np.arange(ROI[1]), cols.min(),
                                                                                   cols.max()))
        np.testing.assert_allclose(np.asarray(crop.dataobj), on_volume[near], atol=1e-3)
        if e["lesion"] == 1:
            assert not inside.all()  # lesion B's crop reaches beyond the volume
        for path, name in zip(e["label"], e["raters"]):
            want = np.where(inside, vol_masks[name][tuple(clamped.transpose(2, 0, 1))], 0)  # nothing drawn beyond
            got = np.asarray(nib.load(str(out / path)).dataobj)
            np.testing.assert_array_equal(got, want, err_msg=f"{e['case_id']} {name}")
            np.testing.assert_allclose(nib.load(str(out / path)).affine, affine)
    # a rater whose outline misses the slice is an empty grader there (alice, the smallest, on lesion A's ends)
    ends = [e for e in entries if e["image_id"] == "vol1" and e["lesion"] == 2 and e["slice_index"] in (5, 11)]
    assert len(ends) == 2
    for e in ends:
        sums = [int(np.asarray(nib.load(str(out / p)).dataobj).sum()) for p in e["label"]]
        assert sums[0] == 0 and sums[2] > 0, sums
    # patient-level split: each volume's crops all in one split
    for pid in ("p1", "p2"):
        assert len({s for s in ("training", "validation", "test") for e in datalist[s] if e["patient_id"] == pid}) == 1


def test_volume_export_refuses_what_it_cannot_use_in_one_line(tmp_path):
    image, masks = _image(), _masks()
    two = {"a": {"image": image, "masks": masks, "patient": "p1"}, "b": {"image": image, "masks": masks,
                                                                         "patient": "p2"}}
    studies = _studies(tmp_path / "nogrid", two)
    with pytest.raises(DatasetError, match=r"a\.nii\.gz: a CT volume; .*model's grid, which was not given"):
        export_rater_dataset(studies, tmp_path / "out", roi_size=None)
    # a rater's mask on another grid (shifted by a voxel): named
    shifted = AFFINE.copy()
    shifted[0, 3] += 0.5
    studies = _studies(tmp_path / "offgrid", {**two, "b": {**two["b"], "mask_affine": shifted}})
    with pytest.raises(DatasetError, match=r"rater_alice/b\.nii\.gz: not on the voxel grid of its image .*origin"):
        export_rater_dataset(studies, tmp_path / "out", spacing=MODEL_SPACING, roi_size=ROI)
    # a volume without spacing (no qform/sform): named, nothing guessed
    studies = _studies(tmp_path / "nospacing", two)
    img = nib.Nifti1Image(image, AFFINE)
    img.set_qform(None, code=0)
    img.set_sform(None, code=0)
    nib.save(img, str(studies / "a.nii.gz"))
    with pytest.raises(DatasetError, match=r"a\.nii\.gz: no spatial orientation"):
        export_rater_dataset(studies, tmp_path / "out", spacing=MODEL_SPACING, roi_size=ROI)
    assert not (tmp_path / "out").exists()


def test_a_tip_thinner_than_the_models_pixel_gives_no_crop(tmp_path):
    """A lesion's last slice holding one 0.5 mm voxel, which the 1 mm grid around its centre does not sample: no
    crop of empty graders (that would teach "no lesion" at the lesion's tip), the other slice's crop kept."""
    from monai_probunet.data.volume_crops import volume_crops

    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.full((160, 160, 6), -850, np.int16), affine), str(tmp_path / "img.nii.gz"))
    mask = np.zeros((160, 160, 6), np.uint8)
    mask[70:90, 70:90, 2] = 1  # 10 x 10 mm on slice 2
    mask[80, 81, 3] = 1  # the tip on slice 3: between the crop's pixel centres
    nib.save(nib.Nifti1Image(mask, affine), str(tmp_path / "m.nii.gz"))
    crops = volume_crops(tmp_path / "img.nii.gz", [tmp_path / "m.nii.gz"], (1.0, 1.0), (32, 32))
    assert [c.slice_index for c in crops] == [2] and crops[0].masks.sum() == 100


@pytest.mark.slow
def test_ctrl_c_during_an_export_leaves_the_earlier_export(tmp_path):
    """The raters' export from the command line: a progress line per rated image where the output is a file, and
    Ctrl-C while it reads the volumes gives one line (exit 130) and leaves ``--out``, an earlier export, as it was."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import REPO, terminal_job

    image, masks = _image(), _masks()
    out = tmp_path / "export"
    earlier = _studies(tmp_path / "earlier", {"v": {"image": image, "masks": masks, "patient": "p1"},
                                              "w": {"image": image, "masks": masks, "patient": "p2"}})
    export_rater_dataset(earlier, out, spacing=MODEL_SPACING, roi_size=ROI)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    pad = ((0, 240), (0, 240), (0, 48))  # 320 x 312 x 64 voxels, the same lesions: about a second a volume
    big = np.pad(image, pad, mode="edge")
    big_masks = {name: np.pad(m, pad) for name, m in masks.items()}
    studies = _studies(tmp_path / "later", {f"v{i}": {"image": big, "masks": big_masks, "patient": f"p{i}"}
                                            for i in range(4)})
    cmd = [sys.executable, "-m", "monai_probunet.data.raters", "--studies", str(studies), "--out", str(out),
           "--spacing", "1", "1", "--roi_size", "32", "32"]
    proc = terminal_job(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                        env={**os.environ, "OMP_NUM_THREADS": "1"})
    first = proc.stderr.readline()  # logged once the datastore is read, before the first volume
    assert first.strip() == f"{studies}: 4 rated image(s), 12 raters' labels", first
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"interrupted by Ctrl-C; nothing was written (--out {out} is as it was).", err
    assert "Traceback" not in err, err
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier", "export", "later"]  # no temporary folder left

    # uninterrupted: a progress line that names the images read, then the summary
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "raters' labels: 4/4 rated images, " in proc.stderr and proc.stdout.startswith(f"wrote {out}/datalist.json")
