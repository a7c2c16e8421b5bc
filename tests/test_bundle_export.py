"""``python -m monai_probunet.bundle onnx_export / ckpt_export / verify_net_in_out / verify_metadata``: MONAI's
commands with their options checked first (one line, exit status 2), the export written whole and never over a
file this project did not write, and docs/export.md's recipe from a CT and a click to the CLI's hypotheses."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow  # every test runs python -m monai_probunet.bundle: the slow tier

CONFIGS = str([str(REPO / "bundle" / "configs" / n) for n in ("train.yaml", "inference.yaml")])
METADATA = REPO / "bundle" / "configs" / "metadata.json"
MODEL = REPO / "bundle" / "models" / "model.pt"
NAMES = "{'input_names': ['image'], 'output_names': ['logits']}"

needs_model = pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} does not exist (train the bundle)")


def _bundle(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai_probunet.bundle", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=cwd)


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.strip().endswith(errors[0]), proc.stderr[-3000:]
    return errors[0]


def _export(command: str, filepath: Path, *extra: str) -> list[str]:
    return [command, "export_def", "--config_file", CONFIGS, "--meta_file", str(METADATA), "--ckpt_file", str(MODEL),
            "--filepath", str(filepath), *extra]  # fmt: skip


@needs_model
@pytest.mark.parametrize(
    "args, said",
    [
        (("--input_shape", "[1, 1, 32, 32]"), r"--input_shape \[1, 1, 32, 32\]: expected \[B, 1, 64, 64\] .*json"),
        (("--input_shape", "[1, 64, 64]"), r"--input_shape \[1, 64, 64\]: expected \[B, 1, 64, 64\]"),
        (("--ckpt_file", "nope.pt"), r"--ckpt_file nope.pt: no such file\."),
        (("--ckpt_file",), r"onnx_export needs --ckpt_file FILE"),
    ],
    ids=["crop", "no-channel-axis", "missing-weights", "no-weights"],
)
def test_onnx_export_refuses_a_wrong_option_in_one_line(tmp_path, args, said):
    """A crop other than the model's (MONAI exports a 32 x 32 graph without a word), a shape without the channel
    axis, weights that are not there or not named (MONAI: tracebacks): one line, exit status 2, no file."""
    argv = _export("onnx_export", tmp_path / "model.onnx")
    if args[0] == "--ckpt_file":
        i = argv.index("--ckpt_file")
        argv[i:i + 2] = list(args)
    else:
        argv += list(args)
    assert re.fullmatch("error: " + said + ".*", _one_line_error(_bundle(*argv)))
    assert list(tmp_path.iterdir()) == []


@needs_model
def test_an_export_never_replaces_a_file_the_project_did_not_write(tmp_path):
    """An existing --filepath that is not an export of this command (here the user's own file named model.onnx, and
    verify_net_in_out without the metadata it verifies against) is refused in one line and left as it was."""
    mine = tmp_path / "model.onnx"
    mine.write_text("the user's own file")
    said = _one_line_error(_bundle(*_export("onnx_export", mine, "--input_shape", "[1, 1, 64, 64]")))
    assert said == f"error: --filepath {mine}: a file this command did not write is there; it is left untouched: " \
                   "remove it yourself or give another --filepath."  # fmt: skip
    assert mine.read_text() == "the user's own file" and sorted(tmp_path.iterdir()) == [mine]
    said = _one_line_error(_bundle("verify_net_in_out", "export_def", "--config_file", CONFIGS, "--device", "cpu"))
    assert said.startswith("error: verify_net_in_out needs --meta_file FILE")


def _schema_case(tmp_path: Path, url: str, version: object = "0.3.1") -> Path:
    meta = json.loads(METADATA.read_text())
    meta["schema"], meta["version"] = url, version
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(meta))
    return path


def test_verify_metadata_offline_is_one_line_and_reads_a_schema_already_there(tmp_path):
    """MONAI's verify_metadata downloads the schema (a traceback without a network or without --filepath); here:
    one line naming the URL, nothing written; with the schema already at --filepath it verifies offline, and a
    field the schema refuses is one line naming the field."""
    meta = _schema_case(tmp_path, "http://127.0.0.1:9/meta_schema.json")  # nothing listens on the discard port
    said = _one_line_error(_bundle("verify_metadata", "--meta_file", str(meta)))
    assert said.startswith("error: verify_metadata needs --filepath FILE")
    schema = tmp_path / "schema" / "meta_schema.json"
    said = _one_line_error(_bundle("verify_metadata", "--meta_file", str(meta), "--filepath", str(schema)))
    assert said.startswith(f"error: verify_metadata: the schema http://127.0.0.1:9/meta_schema.json could not be "
                           f"downloaded to {schema} (")  # fmt: skip
    assert not schema.exists()
    schema.parent.mkdir(exist_ok=True)
    schema.write_text(json.dumps({"type": "object", "required": ["name", "version"],
                                  "properties": {"version": {"type": "string"}}}))  # fmt: skip
    proc = _bundle("verify_metadata", "--meta_file", str(meta), "--filepath", str(schema))
    assert proc.returncode == 0 and "metadata is verified with no error" in proc.stdout, proc.stderr[-3000:]
    bad = _schema_case(tmp_path, "http://127.0.0.1:9/meta_schema.json", version=3)
    said = _one_line_error(_bundle("verify_metadata", "--meta_file", str(bad), "--filepath", str(schema)))
    assert said == f"error: --meta_file {bad}: version: 3 is not of type 'string' (schema {schema})."


def _recipe() -> str:
    """The Python block of docs/export.md."""
    (block,) = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "export.md").read_text(), flags=re.DOTALL)
    return block


@needs_model
@pytest.mark.slow
def test_the_documented_onnx_export_and_recipe_give_the_cli_hypotheses(tmp_path):
    """docs/export.md end to end: the export command writes the graph with its settings recorded (a rerun replaces
    its own file, no temporary file stays); the doc's Python block on a DICOM series with CT_small.dcm's geometry
    and a lesion, clicked at the lesion, writes the same 16 hypotheses, voxel for voxel, and the same presence
    count as ``python -m monai_probunet.infer``."""
    import nibabel as nib
    import numpy as np
    import onnx

    pytest.importorskip("onnxruntime")
    sys.path.insert(0, str(REPO / "apps" / "monailabel" / "orthanc"))
    try:
        from make_ct_series import make_series
    finally:
        sys.path.pop(0)
    models = tmp_path / "bundle" / "models"
    onnx_path = models / "model.onnx"
    for _ in range(2):  # the second run replaces the file the first wrote
        proc = _bundle(*_export("onnx_export", onnx_path, "--input_shape", "[1, 1, 64, 64]", "--converter_kwargs",
                                NAMES))  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().endswith(f"onnx_export: wrote {onnx_path}")
        assert sorted(p.name for p in models.iterdir()) == ["model.onnx"]
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert props == {"written_by": "monai_probunet.bundle", "export_num_samples": "16", "export_seed": "0",
                     "prior_sampling": '"sobol"', "hu_window": "[-1000.0, 400.0]", "infer_spacing": "[1.0, 1.0]",
                     "infer_roi_size": "[64, 64]"}  # fmt: skip
    shutil.copy(MODEL.parent / "presence_threshold.json", models)
    make_series(tmp_path / "series_dir", slices=8, thickness=2.5, radius_mm=5.0, seed=7)
    proc = subprocess.run([sys.executable, "-c", _recipe()], capture_output=True, text=True, timeout=600,
                          check=False, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = subprocess.run([sys.executable, "-m", "monai_probunet.infer", "series_dir", "--center", "56", "64", "4",
                          "--out", "cli"], capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr[-3000:]
    ours, theirs = (json.loads((tmp_path / d / "report.json").read_text()) for d in ("out", "cli"))
    assert 0 < ours["presence_count"] == theirs["presence_count"] < 16  # the lesion: some hypotheses, not all
    assert ours["areas_mm2"] == theirs["areas_mm2"]
    a, b = (np.asarray(nib.load(tmp_path / d / "hypotheses.nii.gz").dataobj) for d in ("out", "cli"))
    assert a.shape == b.shape == (128, 128, 8, 16) and np.array_equal(a, b)


@needs_model
@pytest.mark.slow
def test_the_torchscript_export_records_who_wrote_it(tmp_path):
    """ckpt_export through the wrapper: the file (``.ts`` added as MONAI adds it) loads with MONAI's reader, runs on
    the model's crop, records ``written_by`` and may be replaced by the next export."""
    import torch
    from monai.data import load_net_with_metadata

    for _ in range(2):
        proc = _bundle(*_export("ckpt_export", tmp_path / "model", "--use_trace", "True", "--input_shape",
                                "[1, 1, 64, 64]"))  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ts"]
    net, meta, _ = load_net_with_metadata(str(tmp_path / "model.ts"))
    assert meta["written_by"] == "monai_probunet.bundle" and meta["name"] == "Probabilistic U-Net"
    with torch.no_grad():
        assert net(torch.rand(1, 1, 64, 64)).shape == (1, 32, 64, 64)
