"""Careless inputs to the inference entry points, each through the real entry point: ``python -m
monai_probunet.infer`` in a subprocess (exit status 2, one ``error:`` line naming the file or option, no traceback,
nothing of the user's deleted or mixed), ``python -m monai.bundle run inferring``, and the all-or-nothing writers.

The model is test_inference's coin-flip ProbUNet (hand-set weights, 0.5 mm, 64 px field); real CT comes from
pydicom's test files (``CT_small.dcm``: 128 x 128 at 0.66 mm)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from monai_probunet.inference import Hypotheses, load_model, predict_hypotheses
from monai_probunet.io_utils import OutputFolderError, atomic_write_json, staged_dir
from monai_probunet.metrics import fit_presence_threshold
from tests.test_inference import CHANNELS, LATENT, coin_flip_probunet, paper_net_yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
CT = get_testdata_file("CT_small.dcm")
SET_FILES = ["entropy.nii.gz", "hypotheses.nii.gz", "mean_probability.nii.gz", "presence_label.nii.gz", "report.json",
             "seg.dcm", "variant_label.nii.gz"]  # seg.dcm: the DICOM SEG of a DICOM input


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> tuple[Path, Path]:
    """``(model.pt, net.yaml)`` of the coin-flip model (config with hu_window, infer_spacing 0.5, network_def)."""
    root = tmp_path_factory.mktemp("model")
    torch.save(coin_flip_probunet().state_dict(), root / "model.pt")
    (root / "net.yaml").write_text(
        "hu_window: [-1000.0, 400.0]\ninfer_spacing: [0.5, 0.5]\nnetwork_def:\n  _target_: monai_probunet.networks.ProbUNet\n"
        f"  spatial_dims: 2\n  channels: {CHANNELS}\n  latent_dim: {LATENT}\n"
    )
    return root / "model.pt", root / "net.yaml"


def infer(*args, model_files=None, timeout: float = 300) -> subprocess.CompletedProcess:
    extra = [] if model_files is None else ["--ckpt", str(model_files[0]), "--config", str(model_files[1])]
    cmd = [sys.executable, "-m", "monai_probunet.infer", *map(str, args), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/", env=ENV, check=False)


def assert_refused(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, exactly one ``error`` line holding every needle, no traceback; returns the line."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, r.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def nifti(path: Path, array: np.ndarray, affine=None, **header) -> Path:
    img = nib.Nifti1Image(np.asarray(array, np.float32), np.diag([0.7, 0.7, 1.0, 1.0]) if affine is None else affine)
    for key, value in header.items():
        img.header[key] = value
    nib.save(img, str(path))
    return path


def ct_slice(size: int = 100) -> np.ndarray:
    """A CT-like slice in HU: lung (-800) with a soft-tissue blob (30 HU)."""
    a = np.full((size, size), -800.0, np.float32)
    a[size // 2 - 8 : size // 2 + 8, size // 2 - 6 : size // 2 + 6] = 30.0
    return a


# ------------------------------------------------------------------------------------------------ cheap: no model


def test_help_and_argument_errors_answer_before_the_heavy_imports(tmp_path, model_files):
    code = "import sys, monai_probunet.infer; print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert r.stdout.strip() == "[]"  # --help parses without torch or MONAI
    r = infer("--help")
    assert r.returncode == 0 and "--batch" in r.stdout and "--allow-non-ct" in r.stdout
    out = tmp_path / "out"
    for args, needles in [
        ((CT, "--center", "64", "70", "--out", out, "--num-samples", "0"), ("--num-samples", "'0'")),
        ((CT, "--center", "64", "70", "--out", out, "--spacing", "0"), ("--spacing", "positive")),
        ((CT, "--center", "64", "70", "--out", out, "--spacing", "1", "1", "1"), ("--spacing", "1 or 2 values")),
        ((CT, "--out", out), ("--center",)),
        ((CT, "--center", "1", "1", "--batch", tmp_path / "c.json", "--out", out), ("--batch",)),
        ((tmp_path / "missing.nii.gz", "--center", "1", "1", "--out", out), ("missing.nii.gz", "does not exist")),
    ]:
        assert_refused(infer(*args, model_files=model_files), *needles)
    (tmp_path / "empty.pt").write_bytes(b"")
    for ckpt, needles in [(tmp_path / "empty.pt", ("empty.pt", "empty")), (tmp_path / "no.pt", ("no.pt", "--ckpt"))]:
        assert_refused(infer(CT, "--center", "64", "70", "--out", out, "--ckpt", ckpt), *needles)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ model, files


def _bad_model_inputs(tmp_path: Path, model_files) -> tuple[list, list]:
    """``(common, more)`` lists of (CLI options, needles of the error line) for bad checkpoints, devices,
    thresholds and configs; ``common`` runs by default, ``more`` with the slow tests."""
    ckpt, cfg = model_files
    good = ckpt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04 not a pickle" * 40)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    (tmp_path / "thr.json").write_text("{low: 1")
    (tmp_path / "thr_list.json").write_text("[1, 2]")
    (tmp_path / "nospacing.yaml").write_text(cfg.read_text().replace("infer_spacing: [0.5, 0.5]\n", ""))
    (tmp_path / "broken.yaml").write_text("network_def: [unclosed\n")
    common = [
        (("--ckpt", tmp_path / "trunc.pt", "--config", cfg), ("trunc.pt", "not a readable PyTorch state dict")),
        (("--ckpt", ckpt, "--config", cfg, "--device", "cuda:7"), ("cuda:7",)),
        (("--ckpt", ckpt, "--config", cfg, "--threshold", tmp_path / "thr.json"), ("thr.json", "not valid JSON")),
        (("--ckpt", ckpt, "--config", tmp_path / "nospacing.yaml"), ("nospacing.yaml", "infer_spacing")),
    ]
    more = [
        (("--ckpt", tmp_path / "garbage.pt", "--config", cfg), ("garbage.pt", "not a readable PyTorch state dict")),
        (("--ckpt", tmp_path / "list.pt", "--config", cfg), ("list.pt", "not a state dict")),
        (("--ckpt", ckpt, "--config", cfg, "--device", "tpu"), ("tpu", "not a torch device")),
        (("--ckpt", ckpt, "--config", cfg, "--threshold", tmp_path / "thr_list.json"), ("thr_list.json", "list")),
        (("--ckpt", ckpt, "--config", tmp_path / "broken.yaml"), ("broken.yaml", "could not be read")),
        (("--config", REPO / "bundle" / "configs" / "scenes32.yaml"), ("scenes32.yaml", "needs train.yaml before it")),
        (("--ckpt", ckpt, "--config", cfg, "--roi-size", "4096"), ("crop 4096 x 4096 px", "smaller crop (--roi-size)")),
    ]
    if not torch.cuda.is_available():
        more.append((("--ckpt", ckpt, "--config", cfg, "--device", "cuda"), ("'cuda'", "CUDA is not available")))
    return common, more


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_bad_checkpoints_devices_thresholds_and_configs(tmp_path, model_files):
    common, _ = _bad_model_inputs(tmp_path, model_files)
    out = tmp_path / "out"
    for args, needles in common:
        assert_refused(infer(CT, "--center", "64", "70", "--out", out, *args), *needles)
    assert not out.exists()
    # the spacing the config lacks can be given: then it runs
    r = infer(CT, "--center", "64", "70", "--out", out, "--ckpt", model_files[0], "--config",
              tmp_path / "nospacing.yaml", "--spacing", "0.5", "--num-samples", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["model_spacing_mm"] == [0.5, 0.5]


@pytest.mark.slow
def test_more_bad_checkpoints_devices_thresholds_and_configs(tmp_path, model_files):
    _, more = _bad_model_inputs(tmp_path, model_files)
    out = tmp_path / "out"
    for args, needles in more:
        assert_refused(infer(CT, "--center", "64", "70", "--out", out, *args), *needles)
    assert not out.exists()


@pytest.mark.slow
def test_bad_images_are_refused_with_their_file_named(tmp_path, model_files):
    mr = np.random.default_rng(0).uniform(0.0, 4000.0, (128, 128))  # MR-like: 0..4000, nothing negative
    mr[40:60, 40:60] = 3500.0
    files = {
        "mr": nifti(tmp_path / "mr.nii.gz", mr),
        "tiny": nifti(tmp_path / "tiny.nii.gz", np.full((1, 1), -500.0)),
        "small": nifti(tmp_path / "small.nii.gz", ct_slice(40)),  # 28 mm < the 32 mm field
        "zero": nifti(tmp_path / "zero.nii.gz", ct_slice(), pixdim=[1, 0, 0, 1, 1, 1, 1, 1]),
        "negative": nifti(tmp_path / "negative.nii.gz", ct_slice(), pixdim=[1, -0.7, 0.7, 1, 1, 1, 1, 1]),
        "nan": nifti(tmp_path / "nan.nii.gz", np.where(np.eye(100, dtype=bool), np.nan, ct_slice())),
        "4d": nifti(tmp_path / "4d.nii.gz", np.stack([ct_slice()[..., None]] * 2, -1).repeat(3, 2)),
    }
    (tmp_path / "nodicom").mkdir()
    (tmp_path / "nodicom" / "notes.txt").write_text("no images")
    for name, edit in [
        ("noipp", lambda ds: delattr(ds, "ImagePositionPatient")),
        ("coronal", lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1])),
        ("sagittal", lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1])),
        ("norescale", lambda ds: setattr(ds, "RescaleIntercept", 0)),  # stored values 128..2191, not HU
    ]:
        ds = pydicom.dcmread(CT)
        edit(ds)
        ds.save_as(str(tmp_path / f"{name}.dcm"))
        files[name] = tmp_path / f"{name}.dcm"
    out = tmp_path / "out"
    for args, needles in [
        ((files["mr"], "--center", "64", "64"), ("mr.nii.gz", "not plausibly CT", "--allow-non-ct")),
        ((files["tiny"], "--center", "0", "0"), ("tiny.nii.gz", "smaller than the model's field")),
        ((files["small"], "--center", "20", "20"), ("small.nii.gz", "smaller than the model's field")),
        ((files["zero"], "--center", "50", "50"), ("zero.nii.gz", "zero or negative")),
        ((files["negative"], "--center", "50", "50"), ("negative.nii.gz", "zero or negative")),
        ((files["nan"], "--center", "50", "50"), ("nan.nii.gz", "NaN")),
        ((files["4d"], "--center", "50", "50", "1"), ("4d.nii.gz", "values per voxel", "one CT slice or volume")),
        ((tmp_path / "nodicom", "--center", "5", "5"), ("nodicom", "no DICOM file")),
        ((CT, "--center", "300", "70"), ("CT_small.dcm", "outside the image")),
        ((files["noipp"], "--center", "64", "70"), ("noipp.dcm", "ImagePositionPatient")),
        ((files["coronal"], "--center", "64", "70"), ("coronal.dcm", "a coronal slice", "axial")),
        ((files["sagittal"], "--center", "64", "70"), ("sagittal.dcm", "a sagittal slice")),
        ((files["norescale"], "--center", "64", "70"), ("norescale.dcm", "not plausibly CT")),
        ((CT, "--center", "64", "70", "1000", "--world"), ("off the plane",)),
    ]:
        assert_refused(infer(*args, "--out", out, model_files=model_files), *needles)
    assert not out.exists()
    # MR with the override: a warning line, exit 0
    r = infer(files["mr"], "--center", "64", "64", "--out", out, "--allow-non-ct", "--num-samples", "2",
              model_files=model_files)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning:" in r.stderr and "mr.nii.gz" in r.stderr and "not plausibly CT" in r.stderr


# ------------------------------------------------------------------------------------------------ outputs


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_out_is_replaced_as_a_whole_and_foreign_folders_are_refused(tmp_path, model_files):
    out = tmp_path / "out"
    r = infer(CT, "--center", "64", "70", "--out", out, "--num-samples", "4", "--seed", "1", model_files=model_files)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == SET_FILES
    first = json.loads((out / "report.json").read_text())
    assert first["written_by"] == "monai_probunet.inference" and first["seed"] == 1
    # a second run into the same --out replaces the set as a whole (no file of the first run survives)
    r = infer(CT, "--center", "60", "60", "--out", out, "--num-samples", "2", "--seed", "2", model_files=model_files)
    assert r.returncode == 0, r.stderr[-3000:]
    second = json.loads((out / "report.json").read_text())
    assert second["seed"] == 2 and second["num_samples"] == 2
    assert nib.load(str(out / "hypotheses.nii.gz")).shape == (128, 128, 1, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left beside it
    # a folder holding the user's files, a file, a path under a file: refused, nothing touched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (tmp_path / "afile").write_text("precious")
    for target, needles in [
        (mine, ("--out", "mine", "did not write")),
        (tmp_path / "afile", ("afile", "is a file")),
        (tmp_path / "afile" / "sub", ("afile/sub cannot be created", "afile is a file")),
    ]:
        assert_refused(infer(CT, "--center", "64", "70", "--out", target, model_files=model_files), *needles)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "precious"
    assert (tmp_path / "afile").read_text() == "precious"
    # an earlier set with a file added by the user is not ours any more: refused, kept
    (out / "my_notes.txt").write_text("mine")
    assert_refused(infer(CT, "--center", "64", "70", "--out", out, model_files=model_files), "did not write")
    assert (out / "my_notes.txt").is_file() and json.loads((out / "report.json").read_text())["seed"] == 2


def test_a_failed_write_leaves_the_previous_set(tmp_path, model_files, monkeypatch):
    model, settings = load_model(*model_files)
    h = predict_hypotheses(CT, (64, 70), model, spacing=settings["spacing"], num_samples=4, seed=0)
    out = tmp_path / "out"
    h.save(out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing_save(img, filename):  # the disk fills up after the first file of the new set
        calls.append(filename)
        if len(calls) > 1:
            raise OSError(28, "No space left on device", filename)
        return real_save(img, filename)

    real_save = nib.save
    monkeypatch.setattr(nib, "save", failing_save)
    h2 = predict_hypotheses(CT, (60, 60), model, spacing=settings["spacing"], num_samples=2, seed=5)
    with pytest.raises(OSError, match="No space left"):
        h2.save(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous set, byte for byte
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the partial set was removed
    with pytest.raises(OutputFolderError):
        Hypotheses.save(h, tmp_path / "out" / "report.json")  # a file


def test_ctrl_c_while_writing_leaves_the_previous_set_and_says_so(tmp_path, model_files, monkeypatch, capsys):
    """Ctrl-C while the CLI writes a new set over an earlier one (between its files): exit status 130, one line,
    the earlier set byte for byte and no partial folder beside it."""
    from monai_probunet.infer import main as cli_main

    out = tmp_path / "out"
    common = ["--ckpt", str(model_files[0]), "--config", str(model_files[1]), "--out", str(out), "--num-samples", "4"]
    assert cli_main([CT, "--center", "64", "70", *common]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    calls = []

    def interrupted_save(img, filename):  # Ctrl-C after the first file of the new set
        calls.append(filename)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_save(img, filename)

    real_save = nib.save
    monkeypatch.setattr(nib, "save", interrupted_save)
    assert cli_main([CT, "--center", "60", "60", *common]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted by Ctrl-C; nothing was written ({out} is as it was)."], err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # Ctrl-C while --png draws the overview, after every other file of the set: still nothing of the new set
    monkeypatch.setattr(nib, "save", real_save)
    import monai_probunet.overview as overview

    def interrupted_overview(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(overview, "result_overview", interrupted_overview)
    assert cli_main([CT, "--center", "60", "60", "--png", *common]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted by Ctrl-C; nothing was written")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_batch_loads_the_model_once_and_matches_the_library(tmp_path, model_files):
    """--batch: several images (a DICOM slice, a 3-D NIfTI with a world centre, a missing file) in one process; each
    case equals the library called in this process (the CLI imports MONAI without its unused optional packages)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "ct.dcm").write_bytes(Path(CT).read_bytes())
    vol = np.repeat(ct_slice(100)[..., None], 5, axis=2)
    affine = np.array([[-0.7, 0, 0, 30.0], [0, 0.7, 0, -10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])
    nifti(data / "vol.nii.gz", vol, affine)
    world = (affine @ [50, 50, 2, 1])[:3].tolist()
    centers = {"ct.dcm": [64, 70], "vol.nii.gz": {"center": world, "world": True}, "gone.nii.gz": [1, 1]}
    (data / "centers.json").write_text(json.dumps(centers))
    out = tmp_path / "out"
    r = infer("--batch", data / "centers.json", "--out", out, "--num-samples", "6", "--seed", "4",
              model_files=model_files)
    assert r.returncode == 2, r.stderr[-3000:]  # a case failed: bad input, the good cases are written
    assert "2 ok, 1 failed" in r.stdout and "gone: failed" in r.stderr and "Traceback" not in r.stderr
    summary = json.loads((out / "inference_summary.json").read_text())
    assert summary["num_ok"] == 2 and summary["written_by"] == "monai_probunet.inference"
    assert sorted(p.name for p in out.iterdir()) == ["ct", "inference_summary.json", "vol"]
    model, settings = load_model(*model_files)
    for case, image, center, world_flag in [("ct", CT, [64, 70], False), ("vol", data / "vol.nii.gz", world, True)]:
        report = json.loads((out / case / "report.json").read_text())
        h = predict_hypotheses(image, center, model, world=world_flag, spacing=settings["spacing"], num_samples=6,
                               seed=4)
        assert report["areas_mm2"] == [float(a) for a in h.areas_mm2]
        assert report["presence_count"] == h.presence_count and report["center_voxel"] == list(h.center_voxel)
        np.testing.assert_array_equal(np.moveaxis(np.asarray(nib.load(str(out / case / "hypotheses.nii.gz")).dataobj),
                                                  -1, 0).reshape(h.labels.shape), h.labels)
        name = h.presence_label_report()["name"]  # the label's name, as MONAI Label gives it: printed per case
        assert report["presence_label"]["name"] == name and f"{case}: lesion presence" in r.stdout
        assert f"the label: {name}, " in r.stdout.split(f"{case}: lesion presence")[1].splitlines()[0]
    # a second batch into the same --out replaces the whole run
    (data / "centers.json").write_text(json.dumps({"ct.dcm": [64, 70]}))
    r = infer("--batch", data / "centers.json", "--out", out, "--num-samples", "2", model_files=model_files)
    assert r.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["ct", "inference_summary.json"]


# ------------------------------------------------------------------------------------------------ library pieces


def test_edge_centres_count_only_image_pixels(model_files):
    """A centre at the image corner: the field reaches past the border (air); hypotheses there are not counted."""
    model, _ = load_model(*model_files)
    h = predict_hypotheses(CT, (0, 0), model, spacing=0.5, num_samples=16, seed=0)
    lesion = [k for k in range(16) if h.crop_labels[k].any()]
    assert lesion  # the coin-flip model paints its whole field on about half of the draws
    for k in lesion:  # only the quarter of the 64 x 64 field that lies inside the image (x, y >= -0.5 voxel)
        assert h.areas_mm2[k] == pytest.approx(h.labels[k].sum() * 0.661468**2, rel=0.1)
        assert h.areas_mm2[k] < 0.3 * 64 * 64 * 0.25


def test_presence_fit_is_deterministic_and_order_free():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 17, size=60)
    amb = rng.random(60) < 0.5
    first = fit_presence_threshold(counts, amb, num_samples=16)
    perm = rng.permutation(60)
    for _ in range(3):
        assert fit_presence_threshold(counts[perm], amb[perm], num_samples=16) == first


def test_atomic_json_and_staged_dir_keep_the_previous_state(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": object()})  # not serialisable: the old file stays
    assert json.loads(path.read_text()) == {"v": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "set", is_ours=lambda p: True) as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("killed halfway")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    """A run killed (SIGKILL: no clean-up) while writing leaves its staging folder beside the output; the next run
    removes it, and keeps a running process's staging folder and the user's own files."""
    import signal

    script = ("import sys, time; from monai_probunet.io_utils import staged_dir\n"
              "with staged_dir(sys.argv[1], is_ours=lambda p: True) as tmp:\n"
              "    (tmp / 'x').write_text('partial'); print(tmp.name, flush=True); time.sleep(600)\n")
    runs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "set")], stdout=subprocess.PIPE,
                             text=True, env=ENV) for _ in range(2)]
    staging = [run.stdout.readline().strip() for run in runs]
    runs[0].send_signal(signal.SIGKILL)
    runs[0].wait(timeout=30)
    (tmp_path / ".set.notes").write_text("the user's")
    try:
        assert all((tmp_path / name / "x").is_file() for name in staging)
        with staged_dir(tmp_path / "set", is_ours=lambda p: True) as tmp:
            (tmp / "report.json").write_text("{}")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".set.notes", staging[1], "set"])
    finally:
        runs[1].kill()
        runs[1].wait(timeout=30)


@pytest.mark.slow
def test_bundle_inferring_refuses_a_foreign_output_dir(tmp_path, model_files):
    data = tmp_path / "data"
    data.mkdir()
    nifti(data / "slice.nii.gz", ct_slice(100))
    (data / "centers.json").write_text(json.dumps({"slice.nii.gz": [50, 50]}))
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file",
           str([str(REPO / "bundle/configs/train.yaml"), str(REPO / "bundle/configs/inference.yaml"),
                paper_net_yaml(tmp_path)]),
           "--dataset_dir", str(data), "--output_dir", str(out), "--ckpt_path", str(model_files[0]),
           "--infer_num_samples", "2", "--device", "cpu", "--bundle_root", str(REPO / "bundle")]  # run from "/"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/", env=ENV, check=False)
    assert_refused(r, "results", "did not write")
    assert [p.name for p in out.iterdir()] == ["thesis.docx"]


# ------------------------------------------------------------------------------------------------ checked up front


def test_frame_needs_world_and_batch_takes_world_from_its_file(tmp_path, model_files):
    out = tmp_path / "out"
    assert_refused(infer(CT, "--center", "64", "70", "--frame", "LPS", "--out", out, model_files=model_files),
                   "--frame only applies with --world")
    (tmp_path / "c.json").write_text(json.dumps({CT: [64, 70]}))
    for flags in (("--world",), ("--world", "--frame", "LPS")):
        assert_refused(infer("--batch", tmp_path / "c.json", *flags, "--out", out, model_files=model_files),
                       "--world/--frame", "--batch")
    assert not out.exists()


def test_centers_file_cases_are_checked_strictly(tmp_path):
    """Every case of a centers file is checked when the file is read (before any case runs): booleans are JSON
    true/false, centres 2 or 3 finite numbers, unknown keys refused; one line naming the file, the case and the key."""
    from monai_probunet.batch_inference import read_inference_cases

    path = tmp_path / "centers.json"
    good = {"ct.dcm": [64, 70]}
    for case, needles in [
        ({"center": [50, 50], "world": "false"}, ('"world"', 'JSON true or false', '"false" (a string)')),
        ({"center": [50, 50], "world": 0}, ('"world"', "JSON true or false", "got 0")),
        ({"center": [50, 50], "World": True}, ("unknown key 'World'", "'world'", "'case_id'")),
        ([True, 60], ('"center"', "finite numbers", "[true, 60]")),
        ([50, "x"], ('"center"', "finite numbers", '[50, "x"]')),
        ([50, float("nan")], ('"center"', "finite numbers", "NaN")),
        ([50], ('"center"', "2 or 3")),
        ({"center": [50, 50], "frame": "LPS"}, ('"frame"', 'only applies with "world": true')),
        ({"center": [50, 50], "world": True, "frame": "XYZ"}, ('"frame"', "'RAS', 'LPS'")),
        ({"center": [50, 50], "case_id": None}, ('"case_id"', "non-empty string")),
        ({"world": True}, ('no "center"',)),
    ]:
        path.write_text(json.dumps({**good, "b.nii.gz": case}))
        with pytest.raises(ValueError) as e:
            read_inference_cases(tmp_path, path)
        message = str(e.value)
        assert "\n" not in message and str(path) in message and "case 'b.nii.gz'" in message, message
        for needle in needles:
            assert needle in message, (needle, message)
    path.write_text(json.dumps([{"image": "ct.dcm", "center": [64, 70]}, {"image": "b.nii.gz", "centre": [1, 1]}]))
    with pytest.raises(ValueError, match="case 'b.nii.gz': unknown key 'centre'; a case takes 'image', 'center'"):
        read_inference_cases(tmp_path, path)
    # what is accepted, read as written
    path.write_text(json.dumps({"a.nii.gz": [1, 2.5], "b.nii.gz": {"center": [1, 2, 3], "world": True, "frame": "LPS",
                                                                   "case_id": "bee"},
                                "c.nii.gz": {"center": [4, 5], "world": False}}))
    cases = read_inference_cases(tmp_path, path)
    assert [(c["case_id"], c["center"], c["world"], c["frame"]) for c in cases] == [
        ("a", [1.0, 2.5], False, "RAS"), ("bee", [1.0, 2.0, 3.0], True, "LPS"), ("c", [4.0, 5.0], False, "RAS")]


def test_batch_shows_a_progress_bar_in_a_terminal_only(tmp_path, model_files):
    """``--batch`` in a terminal (stderr a tty of 100 columns) shows a progress bar of the cases (none where stderr
    is a file or a pipe: ``test_batch_failures_are_one_line_each_and_exit_2``)."""
    import fcntl
    import pty
    import struct
    import termios

    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b", "c"):
        nifti(data / f"{name}.nii.gz", ct_slice(100))
    (data / "centers.json").write_text(json.dumps({f"{n}.nii.gz": [50, 50] for n in "abc"}))
    cmd = [sys.executable, "-m", "monai_probunet.infer", "--batch", str(data / "centers.json"), "--num-samples", "2",
           "--ckpt", str(model_files[0]), "--config", str(model_files[1])]  # fmt: skip
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "tty")], stdout=subprocess.PIPE, stderr=slave, cwd="/",
                            env=ENV)  # fmt: skip
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.wait(timeout=300) == 0
    assert re.search(r"inferring: 100%.*3/3", shown.decode(errors="replace")), shown[-2000:]
    assert proc.stdout.read().decode().count("lesion presence") == 3


def test_batch_refuses_a_bad_case_before_running_any(tmp_path, model_files):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ct.dcm").write_bytes(Path(CT).read_bytes())
    nifti(data / "b.nii.gz", ct_slice(100))
    (data / "centers.json").write_text(json.dumps({"ct.dcm": [64, 70], "b.nii.gz": {"center": [50, 50],
                                                                                     "world": "false"}}))
    out = tmp_path / "out"
    r = infer("--batch", data / "centers.json", "--out", out, "--num-samples", "2", model_files=model_files)
    assert_refused(r, "centers.json", "'b.nii.gz'", '"world"', "JSON true or false")
    assert "ct:" not in r.stdout and not out.exists()  # not even the good first case ran


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_batch_failures_are_one_line_each_and_exit_2(tmp_path, model_files):
    """A case that fails while running: one line naming the case and the reason (no exception class), the good case
    written, the summary line kept, exit status 2; the same when every case fails."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "ct.dcm").write_bytes(Path(CT).read_bytes())
    cases = [{"image": "ct.dcm", "center": [64, 70]}, {"image": "ct.dcm", "center": [500, 1], "case_id": "outside"},
             {"image": "gone.nii.gz", "center": [1, 1]}]
    (data / "centers.json").write_text(json.dumps(cases))
    out = tmp_path / "out"
    r = infer("--batch", data / "centers.json", "--out", out, "--num-samples", "2", model_files=model_files)
    assert r.returncode == 2, (r.stdout, r.stderr[-3000:])
    assert "1 ok, 2 failed" in r.stdout and "Traceback" not in r.stderr
    assert "inferring" not in r.stderr  # no progress bar where stderr is not a terminal (a log, a pipe)
    for name in ("Error", "ERROR", "nvImageCodec"):
        assert name not in r.stderr, r.stderr
    for case, reason in (("outside", "outside the image"), ("gone", "does not exist")):
        lines = [line for line in r.stderr.splitlines() if case in line]
        assert len(lines) == 1 and lines[0].startswith(f"{case}: failed: ") and reason in lines[0], r.stderr
    assert json.loads((out / "ct" / "report.json").read_text())["num_samples"] == 2
    summary = json.loads((out / "inference_summary.json").read_text())
    assert (summary["num_ok"], summary["num_failed"]) == (1, 2)
    # every case fails (3-D mode on a 2-D slice): the same status, each reason once
    (data / "centers.json").write_text(json.dumps({"ct.dcm": [64, 70]}))
    r = infer("--batch", data / "centers.json", "--out", out, "--3d", "--num-samples", "2", model_files=model_files)
    assert r.returncode == 2 and "0 ok, 1 failed" in r.stdout, (r.stdout, r.stderr[-3000:])
    lines = [line for line in r.stderr.splitlines() if "3-D mode needs a CT volume" in line]
    assert len(lines) == 1 and lines[0].startswith("ct: failed: ") and "Error" not in r.stderr, r.stderr


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_roi_size_the_network_cannot_run_on_is_refused(tmp_path):
    """The shipped model (channels 16..128: 3 halvings, instance norm) runs on 16 px and more, not on 15."""
    out = tmp_path / "out"
    for roi in ("15", "8"):
        assert_refused(infer(CT, "--center", "64", "70", "--out", out, "--roi-size", *roi.split()),
                       f"--roi-size {roi}", "at least 16 px per side")
    assert not out.exists()
    r = infer(CT, "--center", "64", "70", "--out", out, "--roi-size", "16", "--num-samples", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["roi_size"] == [16, 16]


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
def test_spacing_that_resamples_to_an_absurd_size_is_refused(tmp_path, model_files):
    """CT_small.dcm is 128 px of 0.661468 mm = 84.67 mm: at 0.001 mm that would be 84668 x 84668 px."""
    out = tmp_path / "out"
    for spacing, size in (("0.001", "84668 x 84668"), ("1e-9", "84667904000 x 84667904000")):
        assert_refused(infer(CT, "--center", "64", "70", "--out", out, "--spacing", spacing, model_files=model_files),
                       f"--spacing {float(spacing):g}", "CT_small.dcm", size, "8192 x 8192")
    # a volume: only its plane is resampled (100 x 100 px of 0.7 mm; 400 slices of 0.1 mm do not count)
    vol = nifti(tmp_path / "vol.nii.gz", np.repeat(ct_slice(100)[..., None], 400, axis=2),
                np.diag([0.7, 0.7, 0.1, 1.0]))
    assert_refused(infer(vol, "--center", "50", "50", "200", "--out", out, "--spacing", "0.005",
                         model_files=model_files), "--spacing 0.005", "vol.nii.gz", "14000 x 14000")
    assert not out.exists()


@pytest.mark.slow
def test_bundle_inferring_checks_cases_and_exits_2_when_a_case_fails(tmp_path, model_files):
    data = tmp_path / "data"
    data.mkdir()
    nifti(data / "slice.nii.gz", ct_slice(100))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file",
           str([str(REPO / "bundle/configs/train.yaml"), str(REPO / "bundle/configs/inference.yaml"),
                paper_net_yaml(tmp_path)]),
           "--dataset_dir", str(data), "--output_dir", str(out), "--ckpt_path", str(model_files[0]),
           "--infer_num_samples", "2", "--device", "cpu", "--bundle_root", str(REPO / "bundle"),
           "--infer_progress", "false"]
    (data / "centers.json").write_text(json.dumps({"slice.nii.gz": {"center": [50, 50], "world": "false"}}))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/", env=ENV, check=False)
    assert_refused(r, "centers.json", "'slice.nii.gz'", '"world"')
    assert not out.exists()
    (data / "centers.json").write_text(json.dumps({"slice.nii.gz": [50, 50], "gone.nii.gz": [1, 1]}))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd="/", env=ENV, check=False)
    line = assert_refused(r, "1 of 2 case(s) failed (gone)", str(out))
    assert "Traceback" not in r.stderr and line.startswith("error: ")
    log = (r.stdout + r.stderr).splitlines()  # MONAI's log lines go to stdout
    assert len([x for x in log if "case gone" in x and "does not exist" in x and "Error:" not in x]) == 1, log
    summary = json.loads((out / "inference_summary.json").read_text())
    assert (summary["num_ok"], summary["num_failed"]) == (1, 1) and (out / "slice" / "report.json").is_file()
