"""The inference CLI's DICOM SEG (``seg.dcm``) for DICOM input: a 2-D slice and a 3-D series.

Uses the shipped model (bundle/models/model.pt with its presence_threshold.json, bundle/configs/train.yaml), a
synthetic CT series with a lesion (apps/monailabel/orthanc/make_ct_series.py: CT_small's geometry, 8 slices of
2.5 mm) and pydicom's CT_small.dcm. The SEG is read back with pydicom (frame by frame: source instance, position,
segment) and with highdicom, and compared voxel by voxel with the NIfTI outputs: MONAI loads a DICOM slice as
``column x row`` and a series as ``column x row x slice`` (slices in InstanceNumber order), so frame ``k`` of the
SEG is ``label[:, :, k].T``; the NIfTI's affine is checked to put voxel ``(0, 0, k)`` at slice ``k``'s
``ImagePositionPatient``, so both sides sit on the source series' geometry.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from monai_probunet import dicom_seg
from monai_probunet.dicom_seg import DicomSegError
from monai_probunet.infer import main as cli_main
from monai_probunet.metrics import PresenceThreshold
from monai_probunet.presence_label import consensus_label, presence_decision
from monai_probunet.segment_names import hypothesis_segment_names, label_segment_name
from tests.conftest import make_ct_series

hd = pytest.importorskip("highdicom")

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "bundle" / "models" / "model.pt"
TRAIN_YAML = REPO / "bundle" / "configs" / "train.yaml"
APP_INFERS = REPO / "apps" / "monailabel" / "lib" / "infers"
LESION_SLICE, LESION_ROW, LESION_COL = 4, 64, 56  # make_series paints the lesion here (slices 2..5 of 8)

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} does not exist (train the bundle)")


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    """A CT series with a lesion: 8 files ``slice_000.dcm`` .. in slice (= InstanceNumber) order."""
    return make_ct_series(tmp_path_factory.mktemp("ct") / "series", slices=8, thickness=2.5, radius_mm=5.0, seed=7)


def stderr_lines(err: str) -> list[str]:
    """The CLI's stderr lines but the fallback presence rule's warning, which it gives where ``bundle/models`` holds
    weights retrained in place (the README's quickstart) and which these tests are not about."""
    return [line for line in err.strip().splitlines() if not line.startswith("warning: no fitted presence threshold")]


def run(image: Path, center: list[int], out: Path, *options: str) -> int:
    return cli_main([str(image), "--center", *map(str, center), "--ckpt", str(MODEL), "--config", str(TRAIN_YAML),
                     "--out", str(out), *options])


def seg_frames(path: Path) -> tuple[pydicom.Dataset, dict[tuple[int, str], tuple[np.ndarray, list[float]]]]:
    """The SEG and ``(segment number, source SOPInstanceUID) -> (rows x cols uint8 frame, ImagePositionPatient)``."""
    ds = pydicom.dcmread(str(path))
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]

    def group(item: pydicom.Dataset, keyword: str) -> pydicom.Dataset:  # per-frame, else shared by all frames
        return getattr(item, keyword, None) or getattr(shared, keyword)

    frames = {}
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        segment = int(group(item, "SegmentIdentificationSequence")[0].ReferencedSegmentNumber)
        source = str(group(item, "DerivationImageSequence")[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        ipp = [float(v) for v in group(item, "PlanePositionSequence")[0].ImagePositionPatient]
        assert (segment, source) not in frames
        frames[(segment, source)] = (pixels[i], ipp)
    return ds, frames


def check_references(ds: pydicom.Dataset, sources: list[pydicom.Dataset]) -> None:
    """The SEG references exactly the source instances, their series, study, patient and frame of reference."""
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert ds.PatientID == sources[0].PatientID
    assert ds.SeriesInstanceUID != sources[0].SeriesInstanceUID
    (ref,) = ds.ReferencedSeriesSequence
    assert ref.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert sorted(str(i.ReferencedSOPInstanceUID) for i in ref.ReferencedInstanceSequence) == sorted(
        str(s.SOPInstanceUID) for s in sources
    )


def expected_2d_label(out: Path) -> tuple[np.ndarray, str]:
    """The presence-rule label (what MONAI Label returns) and its segment name, from the CLI's NIfTI hypotheses
    and report (the app's rule: presence decision, then the consensus of the lesion-containing hypotheses)."""
    report = json.loads((out / "report.json").read_text())
    stack = np.asarray(nib.load(str(out / "hypotheses.nii.gz")).dataobj)  # H x W x 1 x S (slice) or *spatial x S
    labels = np.moveaxis(stack, -1, 0)
    if labels.ndim == 4 and labels.shape[3] == 1 and report["slice_axis"] is None:
        labels = labels[..., 0]
    threshold = PresenceThreshold.from_dict(report["threshold"]) if report["threshold"] else None
    decision = presence_decision(report["presence_count"], report["num_samples"], threshold)
    if decision.show_lesion:
        lesion = [v for v in report["variants"] if v["has_lesion"]]
        label = consensus_label(labels, fallback=lesion[0]["representative"] if lesion else None)
    else:
        label = np.zeros(labels.shape[1:], np.uint8)
    return label, label_segment_name(report["presence_probability"], report["ambiguous"], decision.show_lesion)


def check_geometry(affine: np.ndarray, sources: list[pydicom.Dataset]) -> None:
    """The NIfTI's voxel ``(0, 0, k)`` is slice ``k``'s first pixel (``ImagePositionPatient``, LPS -> RAS)."""
    for k, src in enumerate(sources):
        lps = np.array([float(v) for v in src.ImagePositionPatient])
        np.testing.assert_allclose(nib.affines.apply_affine(affine, [0, 0, k]), lps * [-1, -1, 1], atol=1e-3)


# ------------------------------------------------------------------------------------------------ 3-D


def test_3d_series_seg(series, tmp_path, capsys):
    """``--3d --seg-hypotheses`` on a series: segment 1 = presence_label.nii.gz and segments 2..17 = the
    hypotheses, frame by frame on the source instances; report.json lists seg.dcm; a rerun replaces the set."""
    sources = [pydicom.dcmread(str(f)) for f in series]
    out = tmp_path / "out3d"
    assert run(series[0].parent, [LESION_COL, LESION_ROW, LESION_SLICE], out, "--3d", "--seg-hypotheses") == 0
    assert re.search(r"^DICOM SEG .*seg\.dcm: segment 1 'lesion p=\d\.\d\d( ambiguous)?' \+ 16 hypotheses",
                     capsys.readouterr().out, re.MULTILINE)
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["dicom_seg"] == "seg.dcm" and report["files"]["presence_label"] == "presence_label.nii.gz"

    presence = nib.load(str(out / "presence_label.nii.gz"))
    label = np.asarray(presence.dataobj)
    hyps = np.asarray(nib.load(str(out / "hypotheses.nii.gz")).dataobj)  # cols x rows x slices x 16
    check_geometry(presence.affine, sources)
    assert label.shape == (128, 128, 8) and label[LESION_COL, LESION_ROW, LESION_SLICE] == 1
    assert np.count_nonzero(label.any(axis=(0, 1))) >= 2  # the label spans slices: a real 3-D comparison
    assert report["presence_label"]["shows_lesion"] and report["presence_label"]["voxels"] == label.sum()

    ds, frames = seg_frames(out / "seg.dcm")
    check_references(ds, sources)
    assert ds.SOPInstanceUID == report["dicom_seg"]["SOPInstanceUID"]
    assert ds.SeriesInstanceUID == report["dicom_seg"]["SeriesInstanceUID"]
    names = [str(s.SegmentLabel) for s in ds.SegmentSequence]
    shows = report["presence_label"]["shows_lesion"]
    assert names[0] == label_segment_name(report["presence_probability"], report["ambiguous"], shows)
    variants = [type("V", (), {"members": v["members"], "has_lesion": v["has_lesion"]}) for v in report["variants"]]
    assert names[1:] == hypothesis_segment_names(variants, 16) == report["dicom_seg"]["segments"][1:]
    wanted = {}  # highdicom's default: a segment's empty frames are left out (an empty slice is no frame)
    for k, src in enumerate(sources):
        for segment in range(1, 18):
            want = label[:, :, k] if segment == 1 else hyps[:, :, k, segment - 2]
            if want.any():
                wanted[(segment, str(src.SOPInstanceUID))] = (want, src)
    assert set(frames) == set(wanted) and len(wanted) < 17 * 8
    for (segment, uid), (want, src) in wanted.items():
        pixels, ipp = frames[(segment, uid)]
        np.testing.assert_allclose(ipp, [float(v) for v in src.ImagePositionPatient], atol=1e-4)
        np.testing.assert_array_equal(pixels, want.T, err_msg=f"segment {segment}, {uid}")

    seg = hd.seg.segread(str(out / "seg.dcm"))  # highdicom's own reading of the same SEG
    uids = [str(s.SOPInstanceUID) for s in sources]
    got = seg.get_pixels_by_source_instance(uids, segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(got, np.moveaxis(label, 2, 0).transpose(0, 2, 1))
    assert seg.get_segment_description(1).segment_label == names[0]

    assert run(series[0].parent, [LESION_COL, LESION_ROW, LESION_SLICE], out, "--3d") == 0  # replaces the set
    assert pydicom.dcmread(str(out / "seg.dcm")).SegmentSequence[-1].SegmentNumber == 1  # label only now


# ------------------------------------------------------------------------------------------------ 2-D


@pytest.mark.parametrize("which", ["lesion_slice", "ct_small"])
def test_2d_slice_seg(series, tmp_path, which, capsys):
    """One DICOM file, 2-D (the default: a SEG with one frame): the presence-rule label of the hypotheses
    (recomputed from hypotheses.nii.gz and report.json by the app's rule) equals the SEG frame voxel by voxel.
    A slice of the lesion gives a non-empty label; CT_small.dcm clicked in soft tissue whatever the model says."""
    if which == "lesion_slice":
        image, center = series[LESION_SLICE], [LESION_COL, LESION_ROW]
    else:
        image = tmp_path / "CT_small.dcm"
        shutil.copy(get_testdata_file("CT_small.dcm"), image)
        center = [64, 64]
    src = pydicom.dcmread(str(image))
    out = tmp_path / "out2d"
    assert run(image, center, out) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["files"]["dicom_seg"] == "seg.dcm"
    label, name = expected_2d_label(out)
    assert label.shape == (int(src.Columns), int(src.Rows))
    if which == "lesion_slice":
        assert label[LESION_COL, LESION_ROW] == 1 and name.startswith("lesion p=")

    ds, frames = seg_frames(out / "seg.dcm")
    check_references(ds, [src])
    assert [str(s.SegmentLabel) for s in ds.SegmentSequence] == [name] == report["dicom_seg"]["segments"]
    assert list(frames) == [(1, str(src.SOPInstanceUID))]
    pixels, ipp = frames[(1, str(src.SOPInstanceUID))]
    np.testing.assert_allclose(ipp, [float(v) for v in src.ImagePositionPatient], atol=1e-4)
    np.testing.assert_array_equal(pixels, label.T)
    printed = capsys.readouterr().out
    assert f"segment 1 '{name}', of series {src.SeriesInstanceUID}" in printed
    # the same label as presence_label.nii.gz, named and measured in report.json and in the printed line
    written = nib.load(str(out / "presence_label.nii.gz"))
    np.testing.assert_array_equal(np.asarray(written.dataobj), label)
    assert report["presence_label"]["name"] == name and report["presence_label"]["voxels"] == label.sum()
    pixel_mm2 = abs(np.linalg.det(written.affine[:2, :2]))
    assert report["presence_label"]["area_mm2"] == pytest.approx(label.sum() * pixel_mm2)
    assert f"; the label: {name}" in printed


def test_2d_on_series_seg(series, tmp_path):
    """2-D mode on a series folder: the SEG covers every instance, the label only the clicked slice."""
    sources = [pydicom.dcmread(str(f)) for f in series]
    out = tmp_path / "out"
    assert run(series[0].parent, [LESION_COL, LESION_ROW, LESION_SLICE], out) == 0
    label, _ = expected_2d_label(out)
    check_geometry(nib.load(str(out / "variant_label.nii.gz")).affine, sources)
    assert label.shape == (128, 128, 8) and label[..., LESION_SLICE].any()
    np.testing.assert_array_equal(np.asarray(nib.load(str(out / "presence_label.nii.gz")).dataobj), label)
    assert not np.delete(label, LESION_SLICE, axis=2).any()
    ds, frames = seg_frames(out / "seg.dcm")
    check_references(ds, sources)
    assert list(frames) == [(1, str(sources[LESION_SLICE].SOPInstanceUID))]  # the other slices' frames are empty
    np.testing.assert_array_equal(frames[(1, str(sources[LESION_SLICE].SOPInstanceUID))][0], label[..., LESION_SLICE].T)


# ------------------------------------------------------------------------------------------------ options, refusals


def test_nifti_with_dicom_seg_refused(tmp_path, capsys):
    """NIfTI input: no SEG by default; ``--dicom-seg`` / ``--seg-hypotheses`` refused in one line (exit 2), before
    anything is written; ``--seg-hypotheses --no-dicom-seg`` is a usage error."""
    vol = np.full((64, 64), -850.0, np.float32)
    vol[28:36, 28:36] = 40.0
    image = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([-1.0, -1.0, 1.0, 1.0])), str(image))
    for option in ("--dicom-seg", "--seg-hypotheses"):
        out = tmp_path / f"o{option}"
        assert run(image, [32, 32], out, option) == 2
        err = stderr_lines(capsys.readouterr().err)
        assert len(err) == 1 and err[0].startswith(f"error: {option}: {image} is not DICOM"), err
        assert not out.exists()
    with pytest.raises(SystemExit) as e:
        run(image, [32, 32], tmp_path / "o", "--seg-hypotheses", "--no-dicom-seg")
    err = stderr_lines(capsys.readouterr().err)
    assert e.value.code == 2 and len(err) == 1 and "not with --no-dicom-seg" in err[0]
    assert run(image, [32, 32], tmp_path / "nifti") == 0
    report = json.loads((tmp_path / "nifti" / "report.json").read_text())
    assert "dicom_seg" not in report and not (tmp_path / "nifti" / "seg.dcm").exists()


def test_no_dicom_seg_and_failed_seg(series, tmp_path, monkeypatch, capsys):
    """``--no-dicom-seg`` skips the SEG; a SEG that cannot be written fails the run in one line and leaves the
    earlier output folder exactly as it was (written whole or not at all)."""
    out = tmp_path / "out"
    assert run(series[LESION_SLICE], [LESION_COL, LESION_ROW], out, "--no-dicom-seg") == 0
    assert not (out / "seg.dcm").exists() and "dicom_seg" not in json.loads((out / "report.json").read_text())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def refuse(*args, **kwargs):
        raise DicomSegError("instance 1.2.3: its pixels are 0.500 voxels off the label grid.")

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", refuse)
    capsys.readouterr()
    assert run(series[LESION_SLICE], [LESION_COL, LESION_ROW], out) == 2
    err = stderr_lines(capsys.readouterr().err)
    assert err == ["error: instance 1.2.3: its pixels are 0.500 voxels off the label grid."]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_source_a_seg_cannot_reference(tmp_path, capsys):
    """Held-out real CT without a Frame of Reference UID (pydicom's ``693_J2KI.dcm``, a JPEG 2000 head slice): a DICOM
    SEG cannot reference it (highdicom refuses in a line that names neither file nor tag). By default the other
    results are written, with one warning line naming the file and the tag; ``--dicom-seg`` asked for it: refused in
    one line (exit 2), nothing written. MONAI's note on its absent GPU decoder, given for every compressed file it
    loads (here the picture's), is not shown."""
    image = Path(get_testdata_file("693_J2KI.dcm"))
    assert "FrameOfReferenceUID" not in pydicom.dcmread(str(image), stop_before_pixels=True)
    out = tmp_path / "out"
    assert run(image, [64, 64], out, "--png") == 0
    captured = capsys.readouterr()
    warning = (f"warning: no seg.dcm: {image} has no Frame of Reference UID (0020,0052), which a DICOM SEG of it "
               f"must reference. The other results are written.")
    assert stderr_lines(captured.err) == [warning]
    report = json.loads((out / "report.json").read_text())
    assert "dicom_seg" not in report and not (out / "seg.dcm").exists()
    assert {"hypotheses", "presence_label"} <= set(report["files"]) and (out / "overview.png").is_file()
    for option in ("--dicom-seg", "--seg-hypotheses"):
        assert run(image, [64, 64], tmp_path / "refused", option) == 2
        err = stderr_lines(capsys.readouterr().err)
        refusal = (f"error: {option}: {image} has no Frame of Reference UID (0020,0052), which a DICOM SEG of it "
                   f"must reference. Leave out {option} for the other results.")
        assert err == [refusal], err
        assert not (tmp_path / "refused").exists()
    # an input refused for itself (ultrasound, also without the UID) gets that one line, not the SEG's warning too
    ultrasound = Path(get_testdata_file("examples_jpeg2k.dcm"))
    assert run(ultrasound, [10, 10], tmp_path / "us") == 2
    err = stderr_lines(capsys.readouterr().err)
    assert len(err) == 1 and "has Modality 'US'; this model segments CT (HU) only" in err[0], err
    # the writer itself refuses it so, for every caller (the MONAI Label app answers 422 with the line)
    with pytest.raises(DicomSegError, match=r"has no Frame of Reference UID \(0020,0052\)"):
        dicom_seg.write_dicom_seg(tmp_path / "seg.dcm", np.zeros((1, 512, 512, 1), np.uint8), np.eye(4),
                                  [{"name": "lesion"}], image)


def test_series_folder_with_a_dicomdir(series, tmp_path, capsys):
    """A series as a CD or USB export holds it: beside the slices the media's ``DICOMDIR`` (a DICOM file that is not
    an image: it was read as a slice, and the run failed with a traceback) and a text file. Both are left out: the
    hypotheses are those of the plain folder, and the SEG references the 8 slices."""
    plain, export = tmp_path / "plain", tmp_path / "export"
    for folder in (plain, export):
        folder.mkdir()
        for f in series:
            shutil.copy(f, folder / f.name)
    shutil.copy(get_testdata_file("DICOMDIR"), export / "DICOMDIR")
    (export / "README.TXT").write_text("exported by a viewer\n")
    for folder in (plain, export):
        assert run(folder, [LESION_COL, LESION_ROW, LESION_SLICE], tmp_path / f"out_{folder.name}", "--3d") == 0
    hyps = [np.asarray(nib.load(str(tmp_path / f"out_{n}" / "hypotheses.nii.gz")).dataobj) for n in ("plain", "export")]
    np.testing.assert_array_equal(hyps[0], hyps[1])
    assert hyps[0].any()
    seg = pydicom.dcmread(str(tmp_path / "out_export" / "seg.dcm"))
    label = np.asarray(nib.load(str(tmp_path / "out_export" / "presence_label.nii.gz")).dataobj)
    assert int(seg.NumberOfFrames) == np.count_nonzero(label.any(axis=(0, 1))) > 0  # a frame per slice of the label
    # the media's top folder (its DICOMDIR, the series below: an MR slice, a CT scout and the CT series): refused in
    # one line that names the series' folders, the CT series first, the largest first
    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(get_testdata_file("DICOMDIR"), media / "DICOMDIR")
    (media / "DICOM" / "SE0001").mkdir(parents=True)
    shutil.copy(get_testdata_file("MR_small.dcm"), media / "DICOM" / "SE0001" / "IM0001")
    scout = pydicom.dcmread(str(series[0]))
    scout.SeriesDescription = "Scout"
    (media / "DICOM" / "SE0002").mkdir()
    scout.save_as(str(media / "DICOM" / "SE0002" / "IM0001"))
    shutil.copytree(plain, media / "DICOM" / "SE0003")
    assert run(media, [LESION_COL, LESION_ROW, LESION_SLICE], tmp_path / "out_media", "--3d") == 2
    err = stderr_lines(capsys.readouterr().err)
    said = (f"error: image folder {media} holds no DICOM file (a folder must be one DICOM series); its subfolders "
            f"hold DICOM series: give one series' folder, e.g. {media / 'DICOM' / 'SE0003'} (CT 'monai-probunet test "
            f"CT series', {len(series)} files), {media / 'DICOM' / 'SE0002'} (CT 'Scout', 1 file), "
            f"{media / 'DICOM' / 'SE0001'} (MR, 1 file).")
    assert err == [said], err


def test_off_grid_label_refused(series):
    """The writer refuses a label whose grid is not the source's (half a voxel off) instead of resampling."""
    src = pydicom.dcmread(str(series[0]))
    lps = np.array([float(v) for v in src.ImagePositionPatient])
    dr, dc = (float(v) for v in src.PixelSpacing)
    affine = np.diag([-dc, -dr, 2.5, 1.0])
    affine[:3, 3] = lps * [-1, -1, 1] + [0.5 * dc, 0, 0]
    with pytest.raises(DicomSegError, match="voxels off the label grid"):
        dicom_seg.label_to_frames(np.zeros((1, 128, 128, 8), np.uint8), affine, [src])
    affine[:3, 3] = lps * [-1, -1, 1]
    frames = dicom_seg.label_to_frames(np.eye(128, dtype=np.uint8)[None, :, :, None].repeat(8, axis=3), affine, [src])
    np.testing.assert_array_equal(frames[0, ..., 0], np.eye(128, dtype=bool))


def test_frames_read_on_every_grid_orientation():
    """Each source pixel reads the label voxel at its own position, whether the label grid's axes run along the
    frames' rows and columns, against them, swapped, with the slices first, or twice as fine (integer steps); a
    pixel outside the grid is refused."""
    from pydicom.dataset import Dataset

    rng = np.random.default_rng(0)
    rows, cols, n = 6, 5, 4

    def instance(k: int) -> Dataset:
        ds = Dataset()
        ds.Rows, ds.Columns, ds.SOPInstanceUID = rows, cols, f"1.2.3.{k}"
        ds.ImageOrientationPatient, ds.PixelSpacing = [1, 0, 0, 0, 1, 0], [0.8, 0.6]  # rows 0.8 mm apart
        ds.ImagePositionPatient = [10.0, -20.0, 5.0 + 2.0 * k]
        return ds

    datasets = [instance(k) for k in range(n)]
    # the series' own grid (voxel (i, j, k) = column i, row j, slice k), LPS -> RAS
    base = np.array([[-0.6, 0, 0, -10.0], [0, -0.8, 0, 20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    grids = {
        "as stored": (base, (cols, rows, n), lambda a: a),
        "flipped in-plane": (base @ _flip(0, cols) @ _flip(1, rows), (cols, rows, n), lambda a: a[::-1, ::-1]),
        "rows first": (base[:, [1, 0, 2, 3]], (rows, cols, n), lambda a: a.transpose(1, 0, 2)),
        "slices first, reversed": (base[:, [2, 0, 1, 3]] @ _flip(0, n), (n, cols, rows),
                                   lambda a: a[:, :, ::-1].transpose(2, 0, 1)),
    }
    truth = rng.integers(0, 2, (2, cols, rows, n)).astype(np.uint8)  # L = 2 layers on the series' own grid
    expected = truth.transpose(3, 2, 1, 0).astype(bool)  # N x rows x cols x L
    for name, (affine, shape, store) in grids.items():
        labels = np.stack([store(layer) for layer in truth])
        assert labels.shape[1:] == shape
        np.testing.assert_array_equal(dicom_seg.label_to_frames(labels, affine, datasets), expected, err_msg=name)
    fine = np.zeros((2, 2 * cols, 2 * rows, n), np.uint8)  # half the spacing in-plane: every other voxel
    fine[:, ::2, ::2] = truth
    fine_affine = base @ np.diag([0.5, 0.5, 1.0, 1.0])
    np.testing.assert_array_equal(dicom_seg.label_to_frames(fine, fine_affine, datasets), expected)
    with pytest.raises(DicomSegError, match="lies outside the label grid"):
        dicom_seg.label_to_frames(truth[:, :, :, : n - 1], base, datasets)


def test_instances_meeting_a_box_on_every_grid_orientation():
    """The instances a box of the label grid meets are those whose pixels lie in it, whichever way the grid's axes
    run (the slices along the last axis or the first, reversed; rows and columns flipped or turned) and where each
    pixel is located (a grid twice as fine in-plane)."""
    from pydicom.dataset import Dataset

    rows, cols, n = 6, 5, 4

    def instance(k: int) -> Dataset:
        ds = Dataset()
        ds.Rows, ds.Columns, ds.SOPInstanceUID = rows, cols, f"1.2.3.{k}"
        ds.ImageOrientationPatient, ds.PixelSpacing = [1, 0, 0, 0, 1, 0], [0.8, 0.6]
        ds.ImagePositionPatient = [10.0, -20.0, 5.0 + 2.0 * k]
        return ds

    datasets = [instance(k) for k in range(n)]
    base = np.array([[-0.6, 0, 0, -10.0], [0, -0.8, 0, 20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    turned = base @ np.array([[0, -1, 0, cols - 1], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])  # i <- j
    cases = {  # grid affine, shape, a box holding slices 1 and 2 (and part of each slice's plane)
        "as stored": (base, (cols, rows, n), (slice(1, 3), slice(None), slice(1, 3))),
        "flipped in-plane": (base @ _flip(0, cols) @ _flip(1, rows), (cols, rows, n),
                             (slice(None), slice(2, 4), slice(1, 3))),
        "slices first, reversed": (base[:, [2, 0, 1, 3]] @ _flip(0, n), (n, cols, rows),
                                   (slice(1, 3), slice(None), slice(None))),
        "rows first, turned": (turned, (rows, cols, n), (slice(0, 2), slice(None), slice(1, 3))),
        "twice as fine": (base @ np.diag([0.5, 0.5, 1.0, 1.0]), (2 * cols, 2 * rows, n),
                          (slice(0, 4), slice(None), slice(1, 3))),
    }
    for name, (affine, shape, box) in cases.items():
        got = dicom_seg._instances_meeting(datasets, affine, shape, box)
        assert [ds.SOPInstanceUID for ds in got] == ["1.2.3.1", "1.2.3.2"], name
    affine, shape, _ = cases["as stored"]
    assert dicom_seg._instances_meeting(datasets, affine, shape, (slice(None), slice(None), slice(3, 4))) == [
        datasets[3]]
    assert dicom_seg._instances_meeting(datasets, affine, shape, (slice(None), slice(None), slice(4, 4))) == []


def _flip(axis: int, n: int) -> np.ndarray:
    """The voxel map ``i -> n - 1 - i`` along ``axis`` as a 4 x 4 matrix (grid affine @ it: the flipped grid)."""
    m = np.eye(4)
    m[axis, axis], m[axis, 3] = -1.0, n - 1
    return m


def test_a_seg_read_back_onto_the_grid_is_the_label_written(series, tmp_path):
    """read_dicom_seg puts each frame of a SEG back at its source instance's voxels: the two overlapping segments
    written (one of them empty on some slices, one empty altogether) come back voxel by voxel, with their names."""
    src = pydicom.dcmread(str(series[0]))
    dr, dc = (float(v) for v in src.PixelSpacing)
    affine = np.diag([-dc, -dr, 2.5, 1.0])
    affine[:3, 3] = np.array([float(v) for v in src.ImagePositionPatient]) * [-1, -1, 1]
    labels = np.zeros((3, 128, 128, 8), np.uint8)
    labels[0, 50:70, 40:60, 2:6] = 1
    labels[1, 55:90, 45:50, 1:3] = 1  # overlaps the first
    folder = series[0].parent
    dicom_seg.write_dicom_seg(tmp_path / "seg.dcm", labels, affine, [{"name": "lesion"}, {"name": "other"},
                              {"name": "empty"}], folder, content_creator="alice")
    back, names = dicom_seg.read_dicom_seg(pydicom.dcmread(str(tmp_path / "seg.dcm")), folder, affine, (128, 128, 8))
    assert names == ["lesion", "other", "empty"]
    np.testing.assert_array_equal(back, labels)
    with pytest.raises(DicomSegError, match="lies outside the label grid"):  # a grid that is not the series'
        dicom_seg.read_dicom_seg(pydicom.dcmread(str(tmp_path / "seg.dcm")), folder, affine, (128, 128, 4))


@pytest.mark.skipif(not dicom_seg._matches_plane_positions(hd.__version__), reason="highdicom < 0.26 frames all")
def test_seg_of_the_occupied_box_is_the_whole_series_seg(series, tmp_path):
    """Given the box a label occupies, the writer frames only the instances meeting it: the SEG is the one the whole
    series gives (every instance referenced, each frame on its own instance and position, the same pixels, read back
    voxel by voxel by the library and by highdicom), and a voxel outside the box (a broken promise) is not in it.
    A label empty everywhere keeps the frames of the box's instances only."""
    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in series]
    dr, dc = (float(v) for v in sources[0].PixelSpacing)
    affine = np.diag([-dc, -dr, 2.5, 1.0])
    affine[:3, 3] = np.array([float(v) for v in sources[0].ImagePositionPatient]) * [-1, -1, 1]
    check_geometry(affine, sources)
    labels = np.zeros((2, 128, 128, 8), np.uint8)
    labels[0, 50:70, 40:60, 2:5] = 1
    labels[1, 55:90, 45:50, 3:5] = 1
    box = (slice(None), slice(40, 100), slice(2, 5))
    folder = series[0].parent
    segments = [{"name": "lesion"}, {"name": "h0"}]
    dicom_seg.write_dicom_seg(tmp_path / "whole.dcm", labels, affine, segments, folder)
    outside = labels.copy()
    outside[1, 10, 10, 7] = 1  # outside the box: not looked at
    dicom_seg.write_dicom_seg(tmp_path / "box.dcm", outside, affine, segments, folder, occupied=box,
                              datasets=sources)
    whole, whole_frames = seg_frames(tmp_path / "whole.dcm")
    ds, frames = seg_frames(tmp_path / "box.dcm")
    check_references(ds, sources)
    assert set(frames) == set(whole_frames) == {
        (segment + 1, str(src.SOPInstanceUID)) for segment in range(2) for k, src in enumerate(sources)
        if labels[segment, :, :, k].any()
    }
    for (segment, uid), (pixels, ipp) in frames.items():
        src = next(s for s in sources if str(s.SOPInstanceUID) == uid)
        np.testing.assert_allclose(ipp, [float(v) for v in src.ImagePositionPatient], atol=1e-4)
        np.testing.assert_array_equal(pixels, whole_frames[(segment, uid)][0])
    assert int(ds.NumberOfFrames) == int(whole.NumberOfFrames) == 5
    back, names = dicom_seg.read_dicom_seg(ds, folder, affine, (128, 128, 8))
    assert names == ["lesion", "h0"]
    np.testing.assert_array_equal(back, labels)
    uids = [str(s.SOPInstanceUID) for s in sources]
    got = hd.seg.segread(str(tmp_path / "box.dcm")).get_pixels_by_source_instance(
        uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True)  # N x rows x cols x L
    np.testing.assert_array_equal(got, labels.transpose(3, 2, 1, 0))

    dicom_seg.write_dicom_seg(tmp_path / "empty.dcm", np.zeros((1, 128, 128, 8), np.uint8), affine, segments[:1],
                              folder, occupied=(slice(None), slice(None), slice(3, 5)))
    empty, frames = seg_frames(tmp_path / "empty.dcm")
    check_references(empty, sources)
    assert sorted(frames) == [(1, str(sources[3].SOPInstanceUID)), (1, str(sources[4].SOPInstanceUID))]
    assert not any(pixels.any() for pixels, _ in frames.values())


def test_cli_reads_each_dicom_header_once(series, tmp_path, monkeypatch):
    """``--3d --seg-hypotheses`` on a series reads each file's header once (for the checks, the loader and the
    SEG) and its pixels once (MONAI's reader); pydicom's reading itself runs, only counted."""
    reads: dict[tuple[str, bool], int] = {}
    real = pydicom.dcmread

    def counted(fp, *args, **kwargs):
        key = (Path(str(fp)).name, bool(kwargs.get("stop_before_pixels", False)))
        reads[key] = reads.get(key, 0) + 1
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counted)
    out = tmp_path / "out"
    assert run(series[0].parent, [LESION_COL, LESION_ROW, LESION_SLICE], out, "--3d", "--seg-hypotheses") == 0
    assert (out / "seg.dcm").is_file()
    assert reads == {(f.name, headers_only): 1 for f in series for headers_only in (True, False)}


def test_app_names_are_the_library_s():
    """The MONAI Label app's DICOM SEG module re-exports the library's writer; its segment names are the CLI's."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"probunet_seg_{name}", APP_INFERS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    app = load("dicom_seg")
    for name in ("DicomSegError", "find_source_series", "label_to_frames", "write_dicom_seg"):
        assert getattr(app, name) is getattr(dicom_seg, name)
    rule = load("label_rule")
    assert rule.hypothesis_segment_names is hypothesis_segment_names and rule.label_segment_name is label_segment_name
