"""Override configs compose in any order: a task override (scenes32.yaml), the paper's settings (paper.yaml) and each
ProbUNet baseline set disjoint keys, so listing them in either order after train.yaml gives the same config."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from monai_probunet.bundle_utils import ConfigValueError
from monai_probunet.data.chest_phantom import NEGATIVE_SITES, check_negative_sites
from monai_probunet.networks import ProbUNet

from .conftest import REPO, train_yaml_parser

CONFIGS = REPO / "bundle" / "configs"
PROBUNET_OVERRIDES = [
    "baselines/fixed_prior.yaml",
    "baselines/fixed_prior_context_free_posterior.yaml",
    "baselines/image2image_vae.yaml",
    "baselines/input_injection.yaml",
]


def _merged(*overrides: str) -> dict:
    return ConfigParser.load_config_files([str(CONFIGS / "train.yaml"), *(str(CONFIGS / f) for f in overrides)])


def _tiny(*overrides: str, **values: object) -> tuple[ConfigParser, ProbUNet]:
    """The merged config with a CPU device, two small scales and ``values``, and the network it builds."""
    parser = train_yaml_parser(*overrides, **{"channels": [4, 8], "bundle_root": "/b", **values})
    return parser, parser.get_parsed_content("network_def")


@pytest.mark.parametrize("baseline", PROBUNET_OVERRIDES)
@pytest.mark.parametrize("other", ["scenes32.yaml", "paper.yaml"])
def test_baseline_and_other_override_in_either_order(baseline, other):
    first, second = _merged(other, baseline), _merged(baseline, other)
    assert first == second
    parser = ConfigParser(first)
    parser.update({"device": "$torch.device('cpu')", "channels": [4, 8]})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, ProbUNet) and net.latent_dim == (3 if "image2image" in baseline else 6)
    assert parser.get_parsed_content("loss").beta == (10.0 if "image2image" in baseline else 1.0)


@pytest.mark.parametrize("baseline", PROBUNET_OVERRIDES)
def test_probunet_baselines_override_only_network_keys(baseline):
    """A ProbUNet baseline changes some of train.yaml's ``network_def`` keys and keeps every other one (the
    Image2Image VAE sets its latent size there, and its KL weight on the loss)."""
    base, merged = _merged()["network_def"], _merged(baseline)["network_def"]
    assert merged["_target_"] == base["_target_"]
    changed = {k for k in merged if merged[k] != base.get(k)}
    network_keys = {"fixed_prior", "posterior_context", "latent_injection", "prior_covariance", "prior_pooling",
                    "latent_dim"}
    assert changed and changed <= network_keys
    assert {k: v for k, v in base.items() if k not in changed} == {k: merged[k] for k in base if k not in changed}


def _resolved(*overrides: str, key: str) -> object:
    parser = ConfigParser(_merged(*overrides))
    parser["bundle_root"] = "/b"
    return parser.get_parsed_content(key)


def test_task_and_baseline_each_name_their_part_of_the_checkpoint_folder():
    """A task override and a baseline name different levels of the folder: no run overwrites another's checkpoints."""
    folders = {
        (): "/b/models",
        ("scenes32.yaml",): "/b/models/scenes32",
        ("baselines/mheads.yaml",): "/b/models/mheads",
        ("unet.yaml",): "/b/models/unet",
        ("scenes32.yaml", "baselines/mheads.yaml"): "/b/models/scenes32/mheads",
        ("baselines/mheads.yaml", "scenes32.yaml"): "/b/models/scenes32/mheads",
    }
    for overrides, folder in folders.items():
        assert _resolved(*overrides, key="ckpt_dir") == folder, overrides
        expected = folder.replace("/b/models", "/b/eval") if overrides else "/b/eval/models"
        assert _resolved(*overrides, "evaluate.yaml", key="output_dir") == expected, overrides


def _train_transforms(*overrides: str) -> list[str]:
    parser = ConfigParser(_merged(*overrides))
    parser.update({"pixel_mm": 1.0, "crop_size": [32, 32]})
    return [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]


def test_augmentation_appends_to_the_training_transforms_in_any_order():
    load = ["LoadImaged", "SelectItemsd", "ScaleIntensityRanged", "EnsureTyped"]
    flips = ["RandFlipd", "RandFlipd", "RandRotate90d"]
    augmentation = ["RandAffined", "Rand2DElasticd", "RandSpatialCropd"]
    label = ["RandFieldOfViewd", "CopyItemsd", "RandGraderd"]
    scanner = ["RandGaussianSmoothd", "RandScaleIntensityd", "RandShiftIntensityd", "RandGaussianNoised"]
    assert _train_transforms() == [*load, *flips, *label, *scanner]
    assert _train_transforms("augmentation.yaml") == [*load, *flips, *augmentation, *label, *scanner]
    assert _train_transforms("paper.yaml") == [*load, *flips, "RandSpatialCropd", *label, *scanner]
    assert _merged("paper.yaml", "augmentation.yaml") == _merged("augmentation.yaml", "paper.yaml")
    assert _train_transforms("paper.yaml", "augmentation.yaml") == _train_transforms("augmentation.yaml")
    scenes = ["LoadImaged", "EnsureChannelFirstd", "LoadImaged", "SelectItemsd", "ScaleIntensityRanged", "EnsureTyped"]
    assert _train_transforms("scenes32.yaml") == [*scenes, "RandFlipd", "RandGraderd", "RandClassFlipd"]


def test_scenes32_evaluation_keeps_the_task_settings():
    """The task's evaluation extension sits after evaluate.yaml; the task's training override may come anywhere."""
    a = _merged("scenes32.yaml", "evaluate.yaml", "scenes32_evaluate.yaml")
    b = _merged("evaluate.yaml", "scenes32.yaml", "scenes32_evaluate.yaml")
    assert a == b
    assert a["ckpt_path"] == "$@ckpt_dir + '/checkpoint_final.pt'"
    # --calibration_samples and the model's data checked first (as evaluate.yaml checks it); the task's own
    # evaluation (its GED classes), logged into MLflow under --tracking as evaluate.yaml's is, then the calibration
    assert len(a["evaluating"]) == 4 and a["evaluating"][3] == "$@calibrate#runner()"
    assert a["evaluating"][1] == _merged("evaluate.yaml")["evaluating"][0]  # check_evaluated_model
    first = "$monai_probunet.handlers.log_evaluation(@evaluate#runner(classes=@ged_classes),"
    assert a["evaluating"][2].startswith(first)


def test_scenes32_evaluation_refuses_a_calibration_sample_count_before_any_work():
    """``--calibration_samples 0`` ended in a traceback after the whole evaluation had been written."""
    parser = train_yaml_parser("scenes32.yaml", "evaluate.yaml", "scenes32_evaluate.yaml", calibration_samples=0)
    with pytest.raises(RuntimeError) as info:  # MONAI wraps an expression's error; the bundle command prints it
        parser.get_parsed_content("evaluating#0")
    assert isinstance(info.value.__cause__, ConfigValueError)
    assert str(info.value.__cause__) == "--calibration_samples: expected a whole number >= 1, got 0."
    parser["calibration_samples"] = 128
    parser.get_parsed_content("evaluating#0", lazy=False)  # the default passes


def test_scenes32_evaluation_refuses_a_model_of_other_data(tmp_path):
    """A model whose model.json names other data is refused before scoring, as evaluate.yaml's evaluation does."""
    from monai_probunet.io_utils import InputFileError
    from monai_probunet.model_folder import trained_settings
    from monai_probunet.model_loading import write_model_settings

    ckpt = tmp_path / "models" / "checkpoint_final.pt"
    ckpt.parent.mkdir()
    torch.save({"w": torch.zeros(1)}, ckpt)
    write_model_settings(ckpt, trained_settings([0, 255], [1.0, 1.0], [64, 128], "folder", tmp_path / "a"))
    files = ("scenes32.yaml", "evaluate.yaml", "scenes32_evaluate.yaml")
    parser = train_yaml_parser(*files, ckpt_dir=str(ckpt.parent), dataset_name="folder",
                               dataset_dir=str(tmp_path / "b"))  # fmt: skip
    with pytest.raises(RuntimeError) as info:
        parser.get_parsed_content("evaluating#1")
    assert isinstance(info.value.__cause__, InputFileError)
    assert f"was trained on {tmp_path / 'a'}, not on {tmp_path / 'b'}" in str(info.value.__cause__)
    parser["dataset_dir"] = str(tmp_path / "a")
    parser.get_parsed_content("evaluating#1", lazy=False)  # its own data: on to the evaluation


@pytest.mark.parametrize("overrides", [(), ("baselines/fixed_prior.yaml",), ("paper.yaml",)])
def test_prior_temperature_reaches_the_network(overrides):
    parser = ConfigParser(_merged(*overrides))
    assert float(parser.get_parsed_content("network_def").prior_temperature) == 1.0  # the paper's sampling
    parser = ConfigParser(_merged(*overrides))
    parser["prior_temperature"] = 1.5
    assert float(parser.get_parsed_content("network_def").prior_temperature) == 1.5


@pytest.mark.parametrize("overrides", [(), ("baselines/fixed_prior.yaml",), ("paper.yaml",)])
def test_prior_sampling_reaches_the_network(overrides):
    parser = ConfigParser(_merged(*overrides))
    assert parser.get_parsed_content("network_def").prior_sampling == "sobol"  # the stratified default
    parser = ConfigParser(_merged(*overrides))
    parser["prior_sampling"] = "iid"
    assert parser.get_parsed_content("network_def").prior_sampling == "iid"


@pytest.mark.parametrize("other", ["baselines/mheads.yaml", "baselines/fixed_prior.yaml", "unet.yaml"])
def test_the_long_schedule_adds_epochs_and_moves_the_learning_rate_drops(other):
    assert _merged("long.yaml", other) == _merged(other, "long.yaml")
    assert _resolved(key="max_epochs") == 9 and _resolved("long.yaml", key="max_epochs") == 14
    assert list(_resolved(key="lr_scheduler#milestones")) == [5, 7]
    assert list(_resolved("long.yaml", key="lr_scheduler#milestones")) == [8, 11]


@pytest.mark.parametrize("other", ["baselines/fixed_prior.yaml", "long.yaml"])
def test_the_empty_draws_override_reaches_the_loss_and_the_network(other):
    """empty_draws.yaml sets the empty-draws term (off in train.yaml) in either order with an ablation or long.yaml:
    the loss's weight, the network's decoder-only draws at twice the prior's spread, one draw per image."""
    assert _merged("empty_draws.yaml", other) == _merged(other, "empty_draws.yaml")
    assert _resolved(key="empty_weight") == 0.0
    parser, net = _tiny("empty_draws.yaml", other)
    assert (net.sample_gradient, net.draw_temperature) == ("decoder", 2.0)
    assert parser.get_parsed_content("loss").empty_weight == 0.25
    assert parser.get_parsed_content("prior_samples") == 1 and parser.get_parsed_content("empty_warmup_epochs") == 2


@pytest.mark.parametrize("other", [None, *PROBUNET_OVERRIDES, "long.yaml"])
def test_the_default_prior_sees_the_click_and_every_ablation_keeps_its_part(other):
    """train.yaml's ProbUNet: the prior net pools the crop's centre, the posterior sees the mask alone, KL weight 10, a
    3-D latent; each ablation keeps its own part (the fixed prior has no prior net, the fixed-prior ablation keeps the
    image in its posterior, the Image2Image VAE its own latent size and KL weight)."""
    others = () if other is None else (other,)
    parser, net = _tiny(*others)
    assert net.latent_dim == 3 and parser.get_parsed_content("loss").beta == 10.0
    assert net.posterior_context is (other == "baselines/fixed_prior.yaml")
    assert (net.prior_net is None) is net.fixed_prior
    if not net.fixed_prior:
        assert net.prior_net.pooling == "mean_centre" and net.posterior_net.pooling == "mean"


@pytest.mark.parametrize("other", ["paper.yaml", "paper_model.yaml", "scenes32.yaml"])
def test_the_paper_settings_restore_the_papers_probunet(other):
    """paper.yaml, paper_model.yaml and scenes32.yaml train the paper's ProbUNet: KL weight 1, a 6-D latent, the prior
    net's global average, a posterior that sees the image beside the segmentation."""
    parser, net = _tiny(other)
    assert net.latent_dim == 6 and parser.get_parsed_content("loss").beta == 1.0
    assert net.posterior_context is True and net.prior_net.pooling == "mean"
    tracked = parser.get_parsed_content("tracking_params")
    assert (tracked["latent_dim"], tracked["beta"]) == (6, 1.0)
    vae, _ = _tiny(other, "baselines/image2image_vae.yaml")
    assert {k: vae.get_parsed_content(f"tracking_params#{k}") for k in ("latent_dim", "beta")} == {
        "latent_dim": 3, "beta": 10.0}


def test_the_default_data_has_crops_on_and_beside_lung_vessels():
    """The default lesion-free crops include lung vessels cut across and lung beside them; the kinds are known."""
    sites = check_negative_sites(_resolved(key="dataset_kwargs")["negative_sites"])
    assert sites["vessel"] > 0 and sites["near_vessel"] > 0 and set(NEGATIVE_SITES) <= set(sites)
    assert sum(sites.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("value, expected", [("false", False), ("true", True), (0, False)])
def test_posterior_context_from_the_command_line_reaches_the_network(value, expected):
    """``--posterior_context false`` (a string on the bundle command line) turns the image out of the posterior."""
    parser, net = _tiny(posterior_context=value)
    assert net.posterior_context is expected
    image, seg = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.long)
    assert net.posterior_input(image, seg).shape[1] == (1 if expected else 0) + 2  # the image, then the one-hot mask
