"""The benchmark scripts refuse bad options and input files with one line naming them and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import their siblings (reference_rows, user_errors) by name

import ged_by_readers
import presence_cues
import reference_rows
from user_errors import ScriptInputError, run_main

PER_IMAGE_HEADER = "model,split,case_id,index,S,ged,presence_count\n"


@pytest.fixture
def datalist(tmp_path) -> Path:
    """A datalist of 8 x 8 images with 4 binary grader masks each (2 cases per split, k = 1 and 4 readers)."""
    rng = np.random.default_rng(0)
    splits = {}
    for split in ("training", "validation", "test"):
        cases = []
        for i, k in enumerate((1, 4)):
            case = f"{split}_{i}"
            nib.save(nib.Nifti1Image(rng.random((8, 8)).astype(np.float32), np.eye(4)), tmp_path / f"{case}.nii.gz")
            labels = []
            for g in range(4):
                mask = np.zeros((8, 8), np.uint8)
                if g < k:
                    mask[2 : 4 + g, 2:5] = 1
                nib.save(nib.Nifti1Image(mask, np.eye(4)), tmp_path / f"{case}_g{g}.nii.gz")
                labels.append(f"{case}_g{g}.nii.gz")
            cases.append({"image": f"{case}.nii.gz", "label": labels, "readers_drawn": k})
        splits[split] = cases
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(splits))
    return path


@pytest.fixture
def summary(tmp_path) -> Path:
    """A JSON file that is neither a datalist nor a CSV (an evaluation's summary.json)."""
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"estimator": "V", "split": "test", "models": {"probunet": {}}}, indent=1))
    return path


def _run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of a script's ``main(argv)`` run as its ``__main__`` block runs it."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_ctrl_c_in_a_script_is_one_line(capsys):
    """Ctrl-C while a script runs: one line and exit status 130, as the bundle command and the CLI, no traceback."""

    def main() -> int:
        raise KeyboardInterrupt

    status, out, err = _run(lambda argv: main(), [], capsys)
    assert status == 130 and out == "" and err == "interrupted by Ctrl-C.\n"


def _assert_one_line(err: str, *words: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err


def test_reference_rows_refuses_a_class_the_masks_never_hold(datalist, capsys):
    code, out, err = _run(reference_rows.main, ["--datalist", str(datalist), "--classes", "5"], capsys)
    assert code == 2 and out == ""  # no table of zeros
    _assert_one_line(err, "--classes 5", "test split", str(datalist), "classes 0, 1")
    with pytest.raises(ScriptInputError, match=r"--classes 5 7: .* these classes \(the masks hold classes 0, 1\)"):
        reference_rows.reference_rows(datalist, classes=(0, 5, 7))
    code, out, err = _run(reference_rows.main, ["--datalist", str(datalist), "--classes", "1"], capsys)
    assert code == 0 and err == "" and "graders (16 draws)" in out


def test_reference_rows_refuses_a_file_that_is_not_a_datalist(summary, capsys):
    code, out, err = _run(reference_rows.main, ["--datalist", str(summary)], capsys)
    assert code == 2 and out == ""
    _assert_one_line(err, f"error: {summary}: key 'training' must be a non-empty list of cases.")


def test_presence_cues_refuses_a_file_that_is_not_a_datalist(summary, capsys):
    code, out, err = _run(presence_cues.main, ["--datalist", str(summary), "--no-subtlety"], capsys)
    assert code == 2 and out == ""
    _assert_one_line(err, f"error: {summary}: key 'training' must be a non-empty list of cases.")


def test_ged_by_readers_refuses_a_file_that_is_not_per_image_csv(datalist, summary, capsys):
    code, out, err = _run(ged_by_readers.main, ["--per-image", str(summary), "--datalist", str(datalist)], capsys)
    assert code == 2 and out == ""
    _assert_one_line(err, f"--per-image {summary}", "per_image.csv", "no column model")


def test_ged_by_readers_refuses_a_datalist_it_cannot_read(datalist, summary, tmp_path, capsys):
    csv = tmp_path / "per_image.csv"
    csv.write_text(PER_IMAGE_HEADER + "probunet,test,test_0,0,16,0.5,4\nprobunet,test,test_1,1,16,0.25,16\n")
    code, out, err = _run(ged_by_readers.main, ["--per-image", str(csv), "--datalist", str(summary)], capsys)
    assert code == 2 and out == ""
    _assert_one_line(err, str(summary), "'training'")
    content = json.loads(datalist.read_text())
    for case in content["test"]:
        del case["readers_drawn"]
    other = tmp_path / "other_datalist.json"
    other.write_text(json.dumps(content))
    code, out, err = _run(ged_by_readers.main, ["--per-image", str(csv), "--datalist", str(other)], capsys)
    assert code == 2 and out == ""
    _assert_one_line(err, f"--datalist {other}", "'readers_drawn'")
    code, out, err = _run(ged_by_readers.main, ["--per-image", str(csv), "--datalist", str(datalist)], capsys)
    assert code == 0 and err == "", err
    assert "GED16 0.375 over 2 images" in out and "1 of 4 readers:   1 images, GED 0.500" in out


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_sample_latency_refuses_zero_rounds():
    """Run as a script (its ``__main__`` block): ``--rounds 0`` is refused before any timing."""
    for option in ("--rounds", "--repeats"):
        proc = subprocess.run([sys.executable, str(BENCHMARKS / "sample_latency.py"), option, "0"],
                              capture_output=True, text=True, timeout=120, check=False, cwd=REPO)  # fmt: skip
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        _assert_one_line(proc.stderr, f"argument {option}: expected an integer >= 1, got '0'")


def test_reference_rows_script_exits_2_with_one_line(datalist):
    """The whole script, as a user runs it: one line on stderr, nothing on stdout, exit status 2."""
    argv = [sys.executable, str(BENCHMARKS / "reference_rows.py"), "--datalist", str(datalist), "--classes", "5"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    _assert_one_line(proc.stderr, "error: --classes 5")
