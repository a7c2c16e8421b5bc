"""Nothing lost, nothing silent, for training: user data and the best model survive faults and bad input.

Each case runs through the real entry point (``python -m monai.bundle run training`` in a subprocess, or a
subprocess killed with SIGKILL / SIGINT) and checks the exit status, a one-line message naming the problem, the
absence of a traceback and that nothing was deleted or truncated.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_probunet.bundle_utils import ConfigValueError, as_bool, check_options, check_overrides
from monai_probunet.data import prepare_dataset
from monai_probunet.data.disk_format import DatasetError, atomic_dataset_dir, generated_by
from monai_probunet.data.validation import validate_cases
from monai_probunet.networks.gaussian_encoder import POOLINGS
from monai_probunet.networks.latent_noise import PRIOR_SAMPLINGS
from monai_probunet.networks.prob_unet import SAMPLE_GRADIENTS

from .conftest import REPO, TRAIN_YAML, run_bundle

TINY = (
    "--dataset_name", "shapes",
    "--dataset_kwargs", "{'num_patients': 12, 'image_size': 32}",
    "--channels", "[8, 16, 32]",
    "--val_interval", "1",
)  # fmt: skip


def _user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Assert exit status 2 and one ``error:`` line holding every fragment, with no traceback; return the line."""
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    assert "Traceback" not in err + proc.stdout, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _user_folder(root: Path) -> dict[str, bytes]:
    """A folder of someone's own images (no datalist.json of a generator); returns its files' contents."""
    (root / "scans").mkdir(parents=True)
    files = {"scans/patient1.nii.gz": b"not really a scan", "notes.txt": b"my annotations"}
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def _small_shapes(root: Path) -> Path:
    return Path(prepare_dataset("shapes", root, seed=1, num_patients=6, images_per_patient=1, image_size=16))


# --- booleans -------------------------------------------------------------------------------------------------


def test_as_bool_is_strict():
    for value, expected in [(True, True), (False, False), (1, True), (0, False), ("false", False), ("FALSE", False),
                            ("True", True), ("yes", True), ("No", False), ("1", True), ("0", False)]:  # fmt: skip
        assert as_bool(value, "resume") is expected
    for bad in ["maybe", "", 2, -1, None, 0.5, "tru"]:
        with pytest.raises(ConfigValueError, match="--resume: expected a boolean"):
            as_bool(bad, "resume")


def test_named_settings_are_checked_against_their_choices():
    check_options(choices={"prior_sampling": ("sobol", PRIOR_SAMPLINGS), "sample_gradient": ("prior", SAMPLE_GRADIENTS)})
    check_options(choices={"encoder_pooling": ("mean_max", POOLINGS)})
    for key, value, allowed in [("prior_sampling", "random", PRIOR_SAMPLINGS), ("sample_gradient", None, SAMPLE_GRADIENTS),
                                ("encoder_pooling", "max", POOLINGS)]:  # fmt: skip
        with pytest.raises(ConfigValueError, match=rf"^--{key}: expected one of {', '.join(allowed)}, got {value!r}\.$"):
            check_options(choices={key: (value, allowed)})
    check_options(conditions={"draw_temperature": (2.0, True, "1 unless --sample_gradient decoder")})
    message = r"^--draw_temperature: expected 1 unless --sample_gradient decoder, got 2\.0\.$"
    with pytest.raises(ConfigValueError, match=message):
        check_options(conditions={"draw_temperature": (2.0, False, "1 unless --sample_gradient decoder")})


def test_an_option_no_config_has_is_refused_with_the_closest_one():
    import monai.bundle

    main = str(Path(monai.bundle.__file__).parent / "__main__.py")  # argv[0] of `python -m monai.bundle`
    files = str([str(TRAIN_YAML), str(TRAIN_YAML.parent / "evaluate.yaml")])
    check_overrides([main, "run", "evaluating", "--config_file", files, "--max_epochs", "1", "--output_dir", "x",
                     "--dataset_kwargs#num_patients", "3", "--tracking", "mlflow", "--tracking_uri", "sqlite:///x.db",
                     "--run_name", "r"])  # all known (the last two added by --tracking); a new nested key
    for typo, want in [("--max_epoch", "did you mean --max_epochs?"), ("--outputdir", "did you mean --output_dir?"),
                       ("--zzz", "the options are the top-level keys")]:
        with pytest.raises(ConfigValueError, match=rf"^{typo}: no config file of this run has the option .*{want}"):
            check_overrides([main, "run", "evaluating", "--config_file", files, typo, "1"])
    with pytest.raises(ConfigValueError, match="max_epoch"):  # --key=value, one config file
        check_overrides([main, "run", "training", f"--config_file={TRAIN_YAML}", "--max_epoch=1"])
    check_overrides(["pytest", "--max_epoch", "1"])  # not the bundle command: its arguments are not overrides
    with pytest.raises(ConfigValueError, match=r"^run evaluatin: no config file .* \(did you mean evaluating\?\)\.$"):
        check_overrides([main, "run", "evaluatin", "--config_file", files])  # MONAI: ValueError after initialize
    with pytest.raises(ConfigValueError, match=r"^run inferring: .* \(these configs run datalist, evaluating, run, "):
        check_overrides([main, "run", "--run_id", "inferring", "--config_file", files])
    check_overrides([main, "ckpt_export", "export_def", "--config_file", files])  # not a run: no run id to check
    for option, value in (("--experiment_name", "lidc"), ("--run_name", "r"), ("--tracking_uri", "sqlite:///x.db")):
        with pytest.raises(ConfigValueError, match=rf"^{option}: only with --tracking mlflow; without it the run logs "
                                                   "nothing to MLflow\\.$"):
            check_overrides([main, "run", "training", "--config_file", str(TRAIN_YAML), option, value])
    for uri in ("file:///tmp/mlruns", "/tmp/mlruns"):  # MLflow 3 has no file store: a database or a server
        with pytest.raises(ConfigValueError, match=rf"^--tracking_uri {uri}: MLflow .* sqlite:///mlflow.db"):
            check_overrides([main, "run", "training", "--config_file", str(TRAIN_YAML), "--tracking", "mlflow",
                             "--tracking_uri", uri])


# --- the user's dataset folder -----------------------------------------------------------------------------------


def test_a_model_of_your_own_data_never_replaces_a_shipped_model(tmp_path):
    """The default ckpt_dir: models/ for the built-in data (the shipped model), models/<the folder's name> for your
    own data (``run evaluating`` with the same options finds it there), a task's or paper.yaml's own sub-folder."""
    from monai.bundle import ConfigParser

    def ckpt_dir(*overrides: str, **options: str) -> str:
        parser = ConfigParser()
        parser.read_config([str(TRAIN_YAML), *(str(TRAIN_YAML.parent / o) for o in overrides)])
        parser.update({"bundle_root": "/b", **options})
        return parser.get_parsed_content("ckpt_dir")

    assert ckpt_dir() == "/b/models"
    own = {"dataset_name": "folder", "dataset_dir": str(tmp_path / "my_graders") + "/"}
    assert ckpt_dir(**own) == "/b/models/my_graders" == ckpt_dir("evaluate.yaml", **own)
    assert ckpt_dir("paper.yaml") == "/b/models/paper" and ckpt_dir("scenes32.yaml") == "/b/models/scenes32"
    assert ckpt_dir(**own, ckpt_dir="/elsewhere") == "/elsewhere"


def test_builtin_name_never_replaces_a_user_folder(tmp_path):
    mine = tmp_path / "MY_DATA"
    files = _user_folder(mine)
    with pytest.raises(DatasetError, match=rf"{mine} holds data this project did not generate.*--dataset_name folder"):
        prepare_dataset("shapes", mine, num_patients=6, images_per_patient=1, image_size=16)
    assert {str(p.relative_to(mine)): p.read_bytes() for p in mine.rglob("*") if p.is_file()} == files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MY_DATA"]  # no temporary sibling left


def test_a_generated_folder_with_user_files_added_is_not_replaced(tmp_path):
    datalist = _small_shapes(tmp_path / "d")
    assert generated_by(datalist.parent) == "shapes"
    (datalist.parent / "my_extra_scans").mkdir()
    assert generated_by(datalist.parent) is None
    with pytest.raises(DatasetError, match="did not generate"):
        prepare_dataset("shapes", datalist.parent, seed=2, num_patients=6, images_per_patient=1, image_size=16)
    assert (datalist.parent / "my_extra_scans").is_dir() and datalist.is_file()


def test_another_builtin_dataset_is_not_replaced(tmp_path):
    datalist = _small_shapes(tmp_path / "d")
    before = datalist.read_bytes()
    with pytest.raises(DatasetError, match="holds the built-in 'shapes' dataset, not 'scenes32'"):
        prepare_dataset("scenes32", datalist.parent)
    assert datalist.read_bytes() == before


def test_regeneration_replaces_only_the_projects_folder_atomically(tmp_path):
    datalist = _small_shapes(tmp_path / "d")
    old = json.loads(datalist.read_text())
    new = prepare_dataset("shapes", datalist.parent, seed=2, num_patients=6, images_per_patient=1, image_size=16)
    assert json.loads(Path(new).read_text())["generator"]["params"]["seed"] == 2 != old["generator"]["params"]["seed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary left


def test_a_dataset_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "data.nii.gz"
    f.write_bytes(b"abc")
    for name in ("shapes", "folder"):
        with pytest.raises(DatasetError, match=f"{f} is a file"):
            prepare_dataset(name, f)
    assert f.read_bytes() == b"abc"


def test_killed_generation_leaves_no_temporary_folder_after_the_next_run(tmp_path):
    root = tmp_path / "d"
    code = textwrap.dedent(f"""
        from monai_probunet.data import prepare_dataset
        prepare_dataset("shapes", {str(root)!r}, seed=1, num_patients=4000, images_per_patient=1, image_size=16)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    tmp = tmp_path / f".d.probunet-{proc.pid}-dataset.partial"
    while not (tmp / "images").is_dir() or len(list((tmp / "images").iterdir())) < 5:  # the run ends by itself
        assert proc.poll() is None, "the generation ended before it could be killed"
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert tmp.is_dir() and not root.exists()  # the kill left a partial temporary folder, nothing at root
    gone = [tmp_path / f".d.probunet-{os.getpid()}0-dataset.old", tmp_path / f".d.tmp-{os.getpid()}0"]
    kept = [tmp_path / ".d.probunet-1-dataset.partial", tmp_path / ".d.tmp-notes", tmp_path / ".e.tmp-99999999"]
    for p in gone + kept:  # no such pids: stale (also in an earlier version's name); pid 1 runs: another run's; ...
        p.mkdir()  # ... not a temporary's name, or another folder's: the user's
    _small_shapes(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in kept] + ["d"])


def test_folders_nothing_can_be_written_into_are_refused_before_any_work(tmp_path):
    """A checkpoint, dataset or output folder that cannot be created or written (below a file; in ``/proc``, where
    even root cannot create a folder, as on a read-only mount) is refused in one line naming it; a writable one is
    accepted and the write check leaves nothing behind."""
    from monai_probunet.bundle_utils import folder_write_problem
    from monai_probunet.io_utils import OutputFolderError, staged_dir

    (tmp_path / "f").write_text("mine")
    assert folder_write_problem(tmp_path / "new" / "models") is None and folder_write_problem(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert folder_write_problem(tmp_path / "f") == "is a file, not a folder"
    assert folder_write_problem(tmp_path / "f" / "m") == f"cannot be created: {tmp_path / 'f'} is a file"
    with pytest.raises(ConfigValueError, match=r"^--ckpt_dir /proc/probunet/m cannot be written: no folder can be "
                       r"created in /proc \("):
        check_options(folders={"ckpt_dir": "/proc/probunet/m"})
    with pytest.raises(DatasetError, match=r"^dataset folder /proc/d cannot be written: no folder can be created in "
                       r"/proc \("), atomic_dataset_dir("/proc/d"):
        pass
    with pytest.raises(DatasetError, match=rf"^dataset folder {tmp_path / 'f' / 'd'} cannot be created: "
                       rf"{tmp_path / 'f'} is a file\.$"), atomic_dataset_dir(tmp_path / "f" / "d"):
        pass
    with pytest.raises(OutputFolderError, match=r"^--out /proc/o cannot be written: no folder can be created in /proc"):
        staged_dir("/proc/o", is_ours=lambda d: True, what="--out")
    assert (tmp_path / "f").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_dataset_dir_refuses_a_user_folder_itself(tmp_path):
    mine = tmp_path / "mine"
    _user_folder(mine)
    with pytest.raises(DatasetError, match="left untouched"), atomic_dataset_dir(mine):
        pass
    assert (mine / "notes.txt").read_bytes() == b"my annotations"


# --- folder datasets are checked before training -----------------------------------------------------------------


def _corrupt_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A ``folder`` dataset (copied from a generated one) with one bad case per problem; returns case -> file."""
    src = _small_shapes(tmp_path / "gen").parent
    root = tmp_path / "user"
    shutil.copytree(src, root)
    content = json.loads((root / "datalist.json").read_text())
    content.pop("generator")
    cases = content["training"] + content["validation"] + content["test"]
    bad: dict[str, str] = {}

    def save(rel: str, array: np.ndarray) -> None:  # a mask on its image's voxel grid (affine)
        image = next(c["image"] for c in cases if rel in c["label"])
        nib.save(nib.Nifti1Image(array, nib.load(str(root / image)).affine), str(root / rel))

    c = cases[0]  # 0/255 mask
    save(c["label"][0], np.array([[0, 255]], np.uint8).repeat(16, 0).repeat(8, 1))
    bad["255"] = c["label"][0]
    c = cases[1]  # 0/0.5 float mask
    save(c["label"][1], np.full((16, 16), 0.5, np.float32))
    bad["0.5"] = c["label"][1]
    c = cases[2]  # label map with a class 2 and a -1
    save(c["label"][2], np.array([[0, 2], [-1, 1]], np.int16).repeat(8, 0).repeat(8, 1))
    bad["2"] = c["label"][2]
    c = cases[3]  # missing image (today only the first and last entries are checked)
    (root / c["image"]).unlink()
    bad["missing"] = c["image"]
    c = cases[4]  # mask of another shape than the image
    save(c["label"][0], np.zeros((20, 16), np.uint8))
    bad["shape"] = c["label"][0]
    c = cases[5]  # 6 graders where every other case has 4
    c["label"] = c["label"] + c["label"][:2]
    bad["graders"] = c["case_id"]
    (root / "datalist.json").write_text(json.dumps(content))
    return root, bad


def test_folder_dataset_every_problem_is_listed_before_training(tmp_path):
    root, bad = _corrupt_folder(tmp_path)
    with pytest.raises(DatasetError) as info:
        validate_cases(root / "datalist.json")
    lines = str(info.value).splitlines()
    assert "6 problem(s)" in lines[0] and len(lines) == 7, str(info.value)
    text = str(info.value)
    assert f"{root / bad['255']} holds values 0, 255;" in text
    assert f"{root / bad['0.5']} holds values 0.5;" in text
    assert f"{root / bad['2']} holds values -1, 0, 1, 2;" in text
    assert f"image {root / bad['missing']} does not exist" in text
    assert f"{root / bad['shape']} is 20 x 16, its image" in text and "is 16 x 16: a grader mask must have" in text
    assert f"case {bad['graders']}: 6 grader masks, most cases have 4" in text


def test_folder_dataset_patients_in_two_splits_no_patient_and_mixed_spacing_are_refused(tmp_path):
    src = _small_shapes(tmp_path / "gen").parent
    root = tmp_path / "user"
    shutil.copytree(src, root)
    content = json.loads((root / "datalist.json").read_text())
    content.pop("generator")
    (root / "datalist.json").write_text(json.dumps(content))
    validate_cases(root / "datalist.json")  # the copy as generated passes
    train, test = content["training"][0], content["test"][0]
    test["patient_id"] = train["patient_id"]  # a training patient's image in the test split
    del content["validation"][0]["patient_id"]
    for rel in [content["training"][1]["image"], *content["training"][1]["label"]]:  # one case at 2 mm among 0.5 mm
        image = nib.load(str(root / rel))
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), np.diag([2.0, 2.0, 1.0, 1.0])), str(root / rel))
    (root / "datalist.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError) as info:
        validate_cases(root / "datalist.json")
    text = str(info.value)
    assert "3 problem(s)" in text.splitlines()[0], text
    assert (f"patient {train['patient_id']!r} has cases in training (case {train['case_id']}), test (case "
            f"{test['case_id']})") in text
    assert f"validation case {content['validation'][0]['case_id']}: no patient_id" in text
    assert (f"training case {content['training'][1]['case_id']}: image spacing [2.0, 2.0] mm, most images "
            "[0.5, 0.5] mm") in text
    # an image normalised to [0, 1]: flat under the HU window training scales it from, fine without one
    rel = content["training"][2]["image"]
    image = nib.load(str(root / rel))
    data = np.asarray(image.dataobj, np.float32)
    nib.save(nib.Nifti1Image((data - data.min()) / (data.max() - data.min()), image.affine), str(root / rel))
    with pytest.raises(DatasetError) as info:
        validate_cases(root / "datalist.json", intensity_window=[-1000.0, 400.0])
    assert "4 problem(s)" in str(info.value).splitlines()[0]
    assert (f"image {root / rel} spans [0, 1], under 1% of the intensity window [-1000, 400] (hu_window)"
            in str(info.value))
    with pytest.raises(DatasetError, match=r"3 problem\(s\)"):
        validate_cases(root / "datalist.json")


def test_problem_list_is_capped(tmp_path):
    root = _small_shapes(tmp_path / "gen").parent
    content = json.loads((root / "datalist.json").read_text())
    for c in content["training"] + content["validation"] + content["test"]:  # 6 cases x 8 missing masks
        c["label"] = [f"labels/nope_{i}.nii.gz" for i in range(8)]
    (root / "datalist.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=r"48 problem\(s\)(.|\n)*and 28 more problems") as info:
        validate_cases(root / "datalist.json")
    assert len(str(info.value).splitlines()) == 22


# --- the best model survives a kill during its save --------------------------------------------------------------

_SAVE_AND_DIE = textwrap.dedent("""
    import os, sys, time
    import torch
    from ignite.engine import Engine, Events
    from monai.handlers import CheckpointSaver
    from monai_probunet.handlers import AtomicCheckpointSaver

    ckpt_dir, which, saver_name = sys.argv[1], sys.argv[2], sys.argv[3]
    net = torch.nn.Linear(4, 4)
    torch.nn.init.constant_(net.weight, 1.0)
    saver_cls = AtomicCheckpointSaver if saver_name == "atomic" else CheckpointSaver
    if which == "model.pt":
        saver = saver_cls(ckpt_dir, {"model": net}, save_key_metric=True, key_metric_name="m",
                          key_metric_filename="model.pt", key_metric_negative_sign=True)
    else:
        saver = saver_cls(ckpt_dir, {"model": net}, save_final=True, final_filename="checkpoint_final.pt")
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def metric(e):
        e.state.metrics = {"m": 1.0 / e.state.epoch}  # better every epoch: every epoch saves a new best model
    saver.attach(engine)
    engine.run([0], max_epochs=1)  # the first model.pt / checkpoint_final.pt: weights 1.0
    print("FIRST", flush=True)

    real_save = torch.save
    def dying_save(obj, f, *args, **kwargs):  # the process dies half-way through writing the next file
        import io
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        fh = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        fh.write(data[: len(data) // 2])
        fh.flush()
        print("MIDWRITE", flush=True)
        time.sleep(600)
    torch.save = dying_save
    torch.nn.init.constant_(net.weight, 2.0)
    engine.run([0], max_epochs=2)
""")


def _kill_during_save(ckpt_dir: Path, which: str, saver: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVE_AND_DIE, str(ckpt_dir), which, saver], stdout=subprocess.PIPE, text=True
    )
    try:
        seen = []
        for line in proc.stdout:  # type: ignore[union-attr]
            seen.append(line.strip())
            if line.strip() == "MIDWRITE":
                break
        assert seen[-2:] == ["FIRST", "MIDWRITE"], seen
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow  # subprocesses (the CLI, the bundle, a benchmark script): the slow tier
@pytest.mark.parametrize("which", ["model.pt", "checkpoint_final.pt"])
def test_kill_during_the_save_of_a_new_best_model_keeps_the_previous_one(tmp_path, which):
    _kill_during_save(tmp_path / "atomic", which, "atomic")
    state = torch.load(tmp_path / "atomic" / which, weights_only=True)  # complete, and the previous model
    assert torch.equal(state["weight"], torch.ones(4, 4))
    # MONAI's saver, same kill: the previous file was deleted first and the new one is truncated
    _kill_during_save(tmp_path / "monai", which, "monai")
    with pytest.raises((RuntimeError, EOFError, FileNotFoundError, pickle.UnpicklingError)):
        torch.load(tmp_path / "monai" / which, weights_only=True)


def test_final_model_is_written_only_by_a_run_that_completes(tmp_path, caplog):
    from ignite.engine import Engine, Events

    from monai_probunet.handlers import FinalModel

    net = torch.nn.Linear(2, 2)

    def run(weight: float, stop=None) -> None:
        torch.nn.init.constant_(net.weight, weight)
        engine = Engine(lambda e, b: None)
        FinalModel(tmp_path, net).attach(engine)
        if stop == "terminate":  # what Ctrl-C does: ignite still fires COMPLETED after a terminate
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
        if stop == "raise":
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: 1 / 0)
        try:
            engine.run(range(3), max_epochs=2)
        except ZeroDivisionError:
            pass

    run(1.0, "terminate")  # interrupted first run: nothing written
    assert not (tmp_path / "model.pt").exists()
    run(2.0)
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], torch.full((2, 2), 2.0))
    for stop in ("terminate", "raise"):  # a later run that stops early keeps the completed run's model
        run(3.0, stop)
        assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], torch.full((2, 2), 2.0))
    with caplog.at_level(logging.INFO, logger="monai_probunet.handlers.model_files"):
        run(4.0)  # a later run that completes replaces it, and says so
    assert "(replacing the previous run's)" in caplog.text


def test_best_validation_weights_are_published_with_the_run_that_completes(tmp_path):
    """The best validation epoch's file is written under a working name and moved onto its final name only when
    the run completes: a run that stops early leaves the previous run's, one that never validates removes it, a
    fresh run drops what an abandoned one left, a resumed one keeps it."""
    from ignite.engine import Engine, Events

    from monai_probunet.handlers import FinalModel

    net = torch.nn.Linear(2, 2)
    working, best = tmp_path / "best.running.pt", tmp_path / "best.pt"

    def run(weight: float, validate: bool = True, stop: bool = False, resume: bool = False) -> None:
        torch.nn.init.constant_(net.weight, weight)
        engine = Engine(lambda e, b: None)
        FinalModel(tmp_path, net, publish={working.name: best.name}, resume=resume).attach(engine)
        if validate:  # what the key-metric saver does at a better validation
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=2),
                                     lambda e: torch.save(net.state_dict(), working))
        if stop:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: e.terminate())
        engine.run(range(3), max_epochs=2)

    def weight(path: Path) -> float:
        return float(torch.load(path, weights_only=True)["weight"][0, 0])

    run(1.0)
    assert weight(best) == 1.0 and not working.exists()
    run(2.0, stop=True)  # interrupted: the completed run's best stays; its own working file kept for a resume
    assert weight(best) == 1.0 and weight(working) == 2.0
    run(2.5, validate=False, resume=True)  # the resumed run completes: its earlier best is published
    assert weight(best) == 2.0 and not working.exists()
    run(3.0, stop=True)
    run(4.0, validate=False)  # a fresh run that never validates: neither the abandoned working file nor the old best
    assert not best.exists() and not working.exists() and weight(tmp_path / "model.pt") == 4.0


def test_resuming_a_completed_run_keeps_its_files(tmp_path):
    """--resume true on a run that had completed trains nothing: its best validation weights (published when it
    completed) are not taken for an earlier run's and removed, and model.pt keeps its weights."""
    from ignite.engine import Engine, Events

    from monai_probunet.handlers import FinalModel, LastCheckpoint

    net = torch.nn.Linear(2, 2)
    working, best = tmp_path / "best.running.pt", tmp_path / "best.pt"

    def run(weight: float, resume: bool) -> Engine:
        torch.nn.init.constant_(net.weight, weight)
        engine = Engine(lambda e, b: None)
        LastCheckpoint(tmp_path, {"model": net}, resume=resume).attach(engine)
        FinalModel(tmp_path, net, publish={working.name: best.name}, resume=resume).attach(engine)
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=2), lambda e: torch.save(net.state_dict(), working))
        engine.run(range(3), max_epochs=2)
        return engine

    run(1.0, resume=False)
    assert best.is_file() and not working.exists()
    engine = run(5.0, resume=True)  # loads the completed run's weights (1.0) and trains no iteration
    assert engine.state.iteration == 6
    for path in (best, tmp_path / "model.pt"):
        assert float(torch.load(path, weights_only=True)["weight"][0, 0]) == 1.0, path


def test_atomic_saver_removes_superseded_files_only_after_the_new_one(tmp_path):
    from ignite.engine import Engine, Events

    from monai_probunet.handlers import AtomicCheckpointSaver

    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="m",
                                  key_metric_n_saved=2)  # fmt: skip
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: setattr(e.state, "metrics", {"m": e.state.epoch}))
    seen = []
    real_replace = os.replace

    def replace(src, dst):  # at the moment the new file is moved into place, both older files still exist
        seen.append(sorted(p.name for p in tmp_path.glob("model_key_metric=*.pt")))
        real_replace(src, dst)

    os.replace = replace
    try:
        saver.attach(engine)
        engine.run([0], max_epochs=4)
    finally:
        os.replace = real_replace
    assert seen[-1] == ["model_key_metric=2.pt", "model_key_metric=3.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_key_metric=3.pt", "model_key_metric=4.pt"]
    for p in tmp_path.iterdir():
        assert torch.load(p, weights_only=True).keys() == net.state_dict().keys()


def test_last_checkpoint_does_not_swallow_a_training_error(tmp_path):
    from ignite.engine import Engine

    from monai_probunet.handlers import LastCheckpoint

    def step(engine, batch):
        raise RuntimeError("boom in step")

    engine = Engine(step)
    LastCheckpoint(tmp_path, {"model": torch.nn.Linear(1, 1)}).attach(engine)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(RuntimeError, match="boom in step"):
        engine.run([0], max_epochs=1)
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C handling restored to what it was


def test_a_fresh_run_never_replaces_an_unfinished_runs_checkpoint(tmp_path):
    """Without --resume a fresh run would replace checkpoint_last.pt at its first epoch: refused while the file
    holds a run that stopped early; a completed run's or an unreadable file is not."""
    from ignite.engine import Engine, Events

    from monai_probunet.bundle_utils import InputFileError
    from monai_probunet.handlers import LastCheckpoint

    def run(save_dir: Path, stop_at: int | None, resume: bool = False) -> None:
        engine = Engine(lambda e, b: None)
        LastCheckpoint(save_dir, {"model": torch.nn.Linear(1, 1)}, resume=resume).attach(engine)
        if stop_at is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
        engine.run(range(3), max_epochs=4)

    run(tmp_path / "stopped", stop_at=7)  # stops in epoch 3: epoch 2 saved
    path = tmp_path / "stopped" / "checkpoint_last.pt"
    saved = path.read_bytes()
    with pytest.raises(InputFileError) as e:
        run(path.parent, stop_at=None)
    assert str(e.value) == (f"{path} holds an unfinished run (epoch 2 of 4) that a fresh run would replace: continue "
                            f"it with --resume true, or move {path} away (or give another --ckpt_dir) to start over.")
    assert path.read_bytes() == saved
    run(path.parent, stop_at=None, resume=True)  # the resume itself goes on, and completes the run
    run(path.parent, stop_at=None)  # a completed run may be retrained from scratch
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
    run(tmp_path / "junk", stop_at=None)  # unreadable: nothing to keep


def test_a_resume_on_another_datalist_is_refused(tmp_path):
    """The checkpoint holds its run's datalist.json SHA-256: a resume with other data (or an edited datalist) is
    refused before anything is loaded; the run's own data continue it; a checkpoint without one is not checked."""
    from ignite.engine import Engine

    from monai_probunet.bundle_utils import InputFileError
    from monai_probunet.handlers import LastCheckpoint

    own, other = tmp_path / "own.json", tmp_path / "other.json"
    own.write_text('{"training": [{"image": "a.nii.gz"}]}')
    other.write_text('{"training": [{"image": "b.nii.gz"}]}')

    def run(datalist: Path | None, epochs: int) -> Engine:
        engine = Engine(lambda e, b: None)
        LastCheckpoint(tmp_path / "m", {"model": torch.nn.Linear(1, 1)}, resume=True, datalist=datalist).attach(engine)
        engine.run(range(3), max_epochs=epochs)
        return engine

    run(own, 2)
    with pytest.raises(InputFileError, match=r"checkpoint_last.pt holds a run of another datalist.json \(SHA-256 "):
        run(other, 4)
    assert run(own, 3).state.iteration == 9  # resumed at epoch 2
    (tmp_path / "m" / "checkpoint_last.pt").unlink()
    run(None, 1)  # written without a datalist
    assert run(other, 2).state.iteration == 6


#: rank 0 of a 2-process gloo group that only joins, waits for rank 1 at a barrier and leaves (argv: the port)
_IDLE_RANK0 = """
import datetime, sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=0, world_size=2,
                        timeout=datetime.timedelta(seconds=120))
dist.barrier()
dist.destroy_process_group()
"""


def test_every_rank_gives_the_same_resume_advice_after_ctrl_c(tmp_path):
    """Under torchrun only rank 0 writes checkpoint_last.pt, but every process prints how to resume: a rank other
    than 0 (this process as rank 1 of a real 2-process gloo group) must name the epoch rank 0 saved, not say that
    nothing was saved, and write nothing."""
    import datetime
    import signal as signals
    import socket

    import torch.distributed as dist
    from ignite.engine import Engine, Events

    from monai_probunet.handlers import LastCheckpoint

    def run(folder: Path) -> str:
        engine = Engine(lambda e, b: None)
        LastCheckpoint(folder, {"model": torch.nn.Linear(1, 1)}).attach(engine)
        engine.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda e: signals.raise_signal(signals.SIGINT))
        engine.run(range(3), max_epochs=3)  # epoch 1 saved, Ctrl-C in epoch 2
        return engine.state.interrupted

    advice = "holds epoch 1: continue with the same command and --resume true"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rank0 = subprocess.Popen([sys.executable, "-c", _IDLE_RANK0, str(port)])  # joins while this process runs alone
    assert advice in run(tmp_path / "a")  # no process group: the only process is rank 0
    assert (tmp_path / "a" / "checkpoint_last.pt").is_file()
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2,
                                timeout=datetime.timedelta(seconds=120))
        try:
            assert dist.get_rank() == 1
            said = run(tmp_path / "b")
            dist.barrier()
        finally:
            dist.destroy_process_group()
        assert rank0.wait(timeout=60) == 0
    finally:
        if rank0.poll() is None:
            rank0.kill()
            rank0.wait()
    assert advice in said
    assert not (tmp_path / "b" / "checkpoint_last.pt").exists()  # written by rank 0 only


def test_a_resume_says_that_the_saved_learning_rate_goes_on(tmp_path, caplog):
    """--resume continues the saved optimizer and schedule: a --learning_rate changed on the resume command does not
    apply, and the log says so (it was silently ignored)."""
    import logging

    from ignite.engine import Engine

    from monai_probunet.handlers import LastCheckpoint

    def run(lr: float, resume: bool, epochs: int) -> torch.optim.Optimizer:
        net = torch.nn.Linear(1, 1)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[5])
        engine = Engine(lambda e, b: None)
        LastCheckpoint(tmp_path, {"model": net, "optimizer": optimizer, "lr_scheduler": scheduler},
                       resume=resume).attach(engine)
        engine.run(range(2), max_epochs=epochs)
        return optimizer

    run(1e-3, resume=False, epochs=1)
    with caplog.at_level(logging.WARNING, logger="monai_probunet.handlers.checkpoint"):
        optimizer = run(1e-2, resume=True, epochs=2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert "this command's learning rate 0.01 is not the run's it continues (0.001): the saved optimizer and " \
        "schedule go on with 0.001" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="monai_probunet.handlers.checkpoint"):
        run(1e-3, resume=True, epochs=3)
    assert "learning rate" not in caplog.text


# --- the bundle command ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_bundle_with_builtin_name_refuses_a_user_folder(tmp_path):
    mine = tmp_path / "MY_DATA"
    files = _user_folder(mine)
    proc = run_bundle(*TINY, "--max_epochs", "1", "--dataset_dir", str(mine), "--ckpt_dir", str(tmp_path / "m"))
    _user_error(proc, str(mine), "did not generate", "--dataset_name folder")
    assert {str(p.relative_to(mine)): p.read_bytes() for p in mine.rglob("*") if p.is_file()} == files
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_bundle_bad_folder_dataset_fails_before_training(tmp_path):
    root, bad = _corrupt_folder(tmp_path)
    proc = run_bundle("--dataset_name", "folder", "--dataset_dir", str(root), "--max_epochs", "1",
                      "--channels", "[8, 16, 32]", "--ckpt_dir", str(tmp_path / "m"))  # fmt: skip
    _user_error(proc, str(root / "datalist.json"), "6 problem(s)")
    assert f"{root / bad['255']} holds values 0, 255" in proc.stderr
    assert "Epoch[1]" not in proc.stdout + proc.stderr and not (tmp_path / "m").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    ["resume_maybe", "channels_last_2", "posterior_presence_x", "max_epochs_neg", "dataset_dir_file",
     "not_json", "empty_split", "bad_kwargs", "missing_datalist", "ckpt_dir_file", "kwargs_not_dict", "lr_negative",
     "sample_gradient_x", "torch_compile_x", "draw_temperature_all", "empty_draws_mheads", "prior_pooling_x",
     "option_typo", "precision_x", "seed_x", "resume_junk", "ckpt_dir_unwritable", "dataset_dir_unwritable",
     "hu_window_one", "val_interval_0", "num_workers_neg"],
)  # fmt: skip
def test_bundle_bad_input_is_one_line(tmp_path, case):
    data = tmp_path / "d"
    args: list[str] = [*TINY, "--max_epochs", "1", "--dataset_dir", str(data), "--ckpt_dir", str(tmp_path / "m")]
    expect: tuple[str, ...]
    if case == "resume_maybe":
        args += ["--resume", "maybe"]
        expect = ("--resume", "expected a boolean", "'maybe'")
    elif case == "channels_last_2":
        args += ["--channels_last", "2"]
        expect = ("--channels_last", "expected a boolean", "2")
    elif case == "torch_compile_x":
        args += ["--torch_compile", "fast"]
        expect = ("--torch_compile", "auto or a torch.compile mode", "'fast'")
    elif case == "posterior_presence_x":
        args += ["--posterior_presence", "x"]
        expect = ("--posterior_presence", "expected a boolean")
    elif case == "max_epochs_neg":
        args += ["--max_epochs", "-3"]
        expect = ("--max_epochs", ">= 1", "-3")
    elif case == "dataset_dir_file":
        data.write_bytes(b"x")
        expect = (str(data), "is a file")
    elif case == "ckpt_dir_file":
        (tmp_path / "m").write_bytes(b"model")
        expect = (f"--ckpt_dir {tmp_path / 'm'} is a file",)
    elif case in ("ckpt_dir_unwritable", "dataset_dir_unwritable"):  # a folder even root cannot create a folder in
        key = case.removesuffix("_unwritable")
        args[args.index(f"--{key}") + 1] = "/proc/probunet"
        expect = ("no folder can be created in /proc",)
    elif case == "kwargs_not_dict":
        args[3] = "5"
        expect = ("--dataset_kwargs: expected a dict", "got 5")
    elif case == "lr_negative":
        args += ["--learning_rate", "-0.001"]
        expect = ("--learning_rate: expected a number > 0, got -0.001",)
    elif case == "sample_gradient_x":
        args += ["--sample_gradient", "both"]
        expect = ("--sample_gradient: expected one of all, prior, decoder, got 'both'",)
    elif case == "draw_temperature_all":  # wider draws would train the prior net towards a wider prior
        args += ["--draw_temperature", "2"]
        expect = ("--draw_temperature: expected a number >= 0, and 1 unless --sample_gradient decoder, got 2",)
    elif case == "empty_draws_mheads":  # the override's term needs the ELBO; M-Heads has its own loss
        args += ["--empty_weight", "0.25", "--loss", "$monai_probunet.losses.MHeadsLoss()"]
        expect = ("--empty_weight: expected 0 with a loss other than the ELBO (MHeadsLoss), got 0.25",)
    elif case == "prior_pooling_x":
        args += ["--prior_pooling", "centre"]
        expect = ("--prior_pooling: expected null or one of mean, mean_max, mean_centre, got 'centre'",)
    elif case == "option_typo":  # MONAI's command adds an unknown option to the config, where nothing reads it
        args += ["--max_epoch", "5"]
        expect = ("--max_epoch: no config file of this run has the option 'max_epoch' (did you mean --max_epochs?)",)
    elif case == "precision_x":
        args += ["--precision", "bogus"]
        expect = ("--precision: expected one of auto, fp32, bf16, got 'bogus'",)
    elif case == "hu_window_one":  # MONAI: a traceback on `@hu_window::1` once the data is loaded
        args += ["--hu_window", "[400]"]
        expect = ("--hu_window: expected [low, high]: two numbers, low < high, e.g. [-1000, 400], got [400]",)
    elif case == "val_interval_0":  # ignite: a traceback when the trainer is built
        args += ["--val_interval", "0"]
        expect = ("--val_interval: expected a whole number >= 1, got 0",)
    elif case == "num_workers_neg":  # torch's DataLoader: a traceback when the data loader is built
        args += ["--num_workers", "-1"]
        expect = ("--num_workers: expected a whole number >= 0, got -1",)
    elif case == "seed_x":
        args += ["--seed", "abc"]
        expect = ("--seed: expected a whole number >= 0, got 'abc'",)
    elif case == "resume_junk":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "checkpoint_last.pt").write_bytes(b"not a checkpoint")
        args += ["--resume", "true"]
        expect = (f"--resume: {tmp_path / 'm' / 'checkpoint_last.pt'} is not a readable checkpoint", "move")
    elif case == "bad_kwargs":
        args += ["--dataset_kwargs", "{'num_patients': 12, 'image_size': 8}"]
        expect = ("invalid parameters for dataset 'shapes'", "image_size must be >= 16")
    else:
        root = _small_shapes(tmp_path / "gen").parent
        shutil.copytree(root, data)
        content = json.loads((data / "datalist.json").read_text())
        if case == "not_json":
            (data / "datalist.json").write_text("{training: [")
            expect = (str(data / "datalist.json"), "is not valid JSON")
        elif case == "empty_split":
            content["validation"] = []
            (data / "datalist.json").write_text(json.dumps(content))
            expect = (str(data / "datalist.json"), "'validation' must be a non-empty list")
        else:
            (data / "datalist.json").unlink()
            expect = (str(data / "datalist.json"), "does not exist")
        args[1] = "folder"
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    _user_error(run_bundle(*args), *expect)
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return state.get("model", state)


def _interrupt_with_ctrl_c(ckpt: Path, *args: str) -> tuple[int, str]:
    """Start a bundle training run, send SIGINT once its first checkpoint_last.pt exists; returns (status, output).
    How fast it stops is measured by ``benchmarks/ctrl_c_latency.py``."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN_YAML), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd="/", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not (ckpt / "checkpoint_last.pt").is_file():  # the run ends by itself: no wall-clock limit
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        return proc.returncode, out + err
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_bundle_ctrl_c_stops_and_resume_is_bit_identical(tmp_path):
    # the memory format pinned: `auto` is a timing taken anew by the straight run, and where channels-last measures
    # close to its 1.1x threshold the two runs could compute in different formats (the resumed run keeps its own)
    common = [*TINY, "--dataset_dir", str(tmp_path / "d"), "--max_epochs", "8", "--channels_last", "false"]
    straight = run_bundle(*common, "--ckpt_dir", str(tmp_path / "a"))
    assert straight.returncode == 0, straight.stderr[-3000:]

    ckpt = tmp_path / "b"
    status, log = _interrupt_with_ctrl_c(ckpt, *common, "--ckpt_dir", str(ckpt))
    assert status == 130, (status, log[-3000:])
    assert "Traceback" not in log, log[-3000:]
    line = log.strip().splitlines()[-1]
    assert line.startswith("training interrupted by Ctrl-C in epoch "), log[-3000:]
    assert f"{ckpt / 'checkpoint_last.pt'} holds epoch " in line and "--resume true" in line
    assert not (ckpt / "checkpoint_final.pt").exists()  # an interrupted run has no final checkpoint
    saved_epoch = int(line.split("holds epoch ")[1].split(":")[0])
    trainer = torch.load(ckpt / "checkpoint_last.pt", weights_only=True)["trainer"]
    assert trainer["iteration"] == saved_epoch * trainer["epoch_length"] and saved_epoch < 8

    # the same command with --resume forgotten would replace the interrupted run's checkpoint: refused
    saved = (ckpt / "checkpoint_last.pt").read_bytes()
    forgotten = run_bundle(*common, "--ckpt_dir", str(ckpt))
    assert forgotten.returncode == 2 and "Traceback" not in forgotten.stderr, forgotten.stderr[-3000:]
    assert forgotten.stderr.strip().splitlines()[-1] == (
        f"error: {ckpt / 'checkpoint_last.pt'} holds an unfinished run (epoch {saved_epoch} of 8) that a fresh run "
        f"would replace: continue it with --resume true, or move {ckpt / 'checkpoint_last.pt'} away (or give another "
        "--ckpt_dir) to start over.")
    assert (ckpt / "checkpoint_last.pt").read_bytes() == saved

    resumed = run_bundle(*common, "--resume", "TRUE", "--ckpt_dir", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_at = f"resuming from iteration {trainer['iteration']}, epoch {saved_epoch} until 8 epochs"
    assert resumed_at in resumed.stdout + resumed.stderr
    for name in ("checkpoint_last.pt", "checkpoint_final.pt", "model.pt"):  # the same weights, to the bit
        a, b = _weights(tmp_path / "a" / name), _weights(ckpt / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    # --resume false really starts over (the string 'false' used to be truthy)
    fresh = run_bundle(*TINY, "--dataset_dir", str(tmp_path / "d"), "--max_epochs", "1", "--resume", "false",
                       "--ckpt_dir", str(ckpt))  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    log = fresh.stdout + fresh.stderr
    assert "Resumed from" not in log and "Epoch[1] Complete" in log


def test_configs_use_the_atomic_saver():
    for cfg in [REPO / "bundle" / "configs" / "train.yaml", *sorted((REPO / "bundle" / "configs").rglob("*.yaml"))]:
        text = cfg.read_text()
        assert "_target_: CheckpointSaver" not in text, cfg


def test_rng_state_covers_the_inner_draws_of_dictionary_transforms():
    """A dictionary transform such as RandGaussianNoised draws from its inner array transform's own generator:
    restoring the states the resume checkpoint keeps repeats the same noise exactly."""
    from monai.transforms import Compose, RandGaussianNoised, RandScaleIntensityd

    from monai_probunet.engines.rng_state import _random_transforms

    chain = Compose(
        [RandGaussianNoised(keys="image", prob=1.0, std=0.1), RandScaleIntensityd(keys="image", factors=0.2, prob=1.0)]
    )
    chain.set_random_state(seed=3)
    x = {"image": torch.zeros(1, 8, 8)}
    states = [t.R.get_state() for t in _random_transforms(chain)]
    first = chain(dict(x))["image"]
    assert not torch.equal(first, chain(dict(x))["image"])  # the generators moved on
    for t, s in zip(_random_transforms(chain), states):
        t.R.set_state(s)
    assert torch.equal(first, chain(dict(x))["image"])
