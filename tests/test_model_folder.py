"""A training run's model folder: ``model.json`` beside ``model.pt`` and the checks before a run writes into a folder
(``monai_probunet/model_folder.py``)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from monai_probunet.io_utils import InputFileError
from monai_probunet.model_folder import (
    check_evaluated_model,
    check_training_folder,
    trained_settings,
)
from monai_probunet.model_loading import REPO_CONFIG, load_model, read_model_settings, write_model_settings

from .test_folder_dataset_checks import _folder
from .test_inference import coin_flip_probunet, paper_net_yaml


def test_model_json_records_your_own_datas_grid(tmp_path, caplog):
    datalist = _folder(tmp_path / "data")  # 32 x 32 px at 1 mm
    agree = trained_settings([-1000, 400], [1.0, 1.0], [32, 32], "folder", tmp_path / "data", datalist)
    assert agree["infer_spacing"] == [1.0, 1.0] and agree["infer_roi_size"] == [32, 32]
    assert agree["dataset"] == str(tmp_path / "data") and not caplog.records
    # train.yaml's 64 px at 1 mm (or another spacing) for 32 px images: the images' grid, and a warning naming both
    for spacing, roi in [([1.0, 1.0], [64, 64]), ([0.5, 0.5], [32, 32])]:
        caplog.clear()
        got = trained_settings([-1000, 400], spacing, roi, "folder", tmp_path / "data", datalist)
        assert got["infer_spacing"] == [1.0, 1.0] and got["infer_roi_size"] == [32, 32]
        assert "32 x 32 px at 1 x 1 mm" in caplog.text and "c0.nii.gz" in caplog.text
    # a random crop sets the field; a built-in dataset's grid is its config's
    crop = trained_settings([-1000, 400], [1.0, 1.0], [16, 16], "folder", tmp_path / "data", datalist, [{"r": 16}])
    assert crop["infer_roi_size"] == [16, 16]
    built_in = trained_settings([-1000, 400], [0.5, 0.5], [128, 128], "lidc_phantom", tmp_path / "x", datalist)
    assert built_in["infer_spacing"] == [0.5, 0.5] and built_in["dataset"] == "lidc_phantom"


def test_a_folder_with_a_model_of_other_data_or_files_no_run_wrote_is_refused(tmp_path):
    net = coin_flip_probunet()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    check_training_folder(mine, net, "folder", tmp_path / "a")  # files a run never writes: no matter
    torch.save({"w": torch.zeros(3)}, mine / "model.pt")  # the user's own model.pt
    torch.save({"x": 1}, mine / "checkpoint_final.pt")
    with pytest.raises(InputFileError) as info:
        check_training_folder(mine, net, "folder", tmp_path / "a")
    assert "holds model.pt, checkpoint_final.pt" in str(info.value) and "\n" not in str(info.value)
    # an earlier run's files of this network (no model.json yet): accepted
    run = tmp_path / "run"
    run.mkdir()
    torch.save(net.state_dict(), run / "model.pt")
    torch.save({"model": net.state_dict(), "trainer": {}}, run / "checkpoint_last.pt")
    check_training_folder(run, net, "folder", tmp_path / "a")
    # with model.json: the data it names must be this run's
    write_model_settings(run / "model.pt", trained_settings([-1000, 400], [1, 1], [64, 64], "folder", tmp_path / "a"))
    check_training_folder(run, net, "folder", tmp_path / "a")
    with pytest.raises(InputFileError) as info:
        check_training_folder(run, net, "folder", tmp_path / "b")  # another dataset folder (of another name, or not)
    assert f"trained on {tmp_path / 'a'}, and this run trains on {tmp_path / 'b'}" in str(info.value)
    with pytest.raises(InputFileError, match="trained on .*a, not on .*b"):
        check_evaluated_model(run / "model.pt", "folder", tmp_path / "b")
    check_evaluated_model(run / "model.pt", "folder", tmp_path / "a")


def test_inference_takes_the_grid_the_model_was_trained_on(tmp_path):
    net = coin_flip_probunet()
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save(net.state_dict(), folder / "model.pt")
    config = [str(REPO_CONFIG), paper_net_yaml(tmp_path)]  # train.yaml's 1 mm and 64 px
    _, settings = load_model(folder / "model.pt", config)
    assert list(settings["spacing"]) == [1.0, 1.0] and list(settings["roi_size"]) == [64, 64]
    write_model_settings(folder / "model.pt", trained_settings([-900, 300], [0.8, 0.8], [48, 48], "folder", "d"))
    assert read_model_settings(folder / "model.pt")["infer_roi_size"] == [48, 48]
    _, settings = load_model(folder / "model.pt", config)
    assert list(settings["spacing"]) == [0.8, 0.8] and list(settings["roi_size"]) == [48, 48]
    assert tuple(settings["hu_window"]) == (-900.0, 300.0)
    _, settings = load_model(folder / "model.pt", config, spacing=0.7)  # said on the command line: that
    assert settings["spacing"] == 0.7
    # retrained weights with the old model.json beside them: not theirs, the config's settings and a warning
    other = coin_flip_probunet()
    with torch.no_grad():
        next(other.parameters()).add_(1.0)
    torch.save(other.state_dict(), folder / "model.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, settings = load_model(folder / "model.pt", config)
    assert list(settings["spacing"]) == [1.0, 1.0]
    assert any("describes other weights" in str(w.message) for w in caught)
    assert json.loads((folder / "model.json").read_text())["written_by"] == "monai_probunet.training"
