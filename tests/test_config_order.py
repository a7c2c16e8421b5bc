"""Override configs compose in any order: a task override (scenes32.yaml), the paper's settings (paper.yaml) and each
ProbUNet baseline set disjoint keys, so listing them in either order after train.yaml gives the same config."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from monai_probunet.networks import ProbUNet

from .conftest import REPO

CONFIGS = REPO / "bundle" / "configs"
PROBUNET_OVERRIDES = [
    "baselines/fixed_prior.yaml",
    "baselines/fixed_prior_context_free_posterior.yaml",
    "baselines/image2image_vae.yaml",
    "baselines/input_injection.yaml",
]


def _merged(*overrides: str) -> dict:
    return ConfigParser.load_config_files([str(CONFIGS / "train.yaml"), *(str(CONFIGS / f) for f in overrides)])


@pytest.mark.parametrize("baseline", PROBUNET_OVERRIDES)
@pytest.mark.parametrize("other", ["scenes32.yaml", "paper.yaml"])
def test_baseline_and_other_override_in_either_order(baseline, other):
    first, second = _merged(other, baseline), _merged(baseline, other)
    # both name their checkpoint folder: the later one wins (pass --ckpt_dir when combining them)
    first.pop("ckpt_dir"), second.pop("ckpt_dir")
    assert first == second
    parser = ConfigParser(first)
    parser.update({"device": "$torch.device('cpu')", "channels": [4, 8]})
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, ProbUNet) and net.latent_dim == (3 if "image2image" in baseline else 6)
    assert parser.get_parsed_content("loss").beta == (10.0 if "image2image" in baseline else 1.0)


@pytest.mark.parametrize("baseline", PROBUNET_OVERRIDES)
def test_probunet_baselines_override_only_network_keys(baseline):
    """A ProbUNet baseline changes some of train.yaml's ``network_def`` keys and keeps every other one."""
    base, merged = _merged()["network_def"], _merged(baseline)["network_def"]
    assert merged["_target_"] == base["_target_"]
    changed = {k for k in merged if merged[k] != base.get(k)}
    assert changed and changed <= {"fixed_prior", "posterior_context", "latent_injection", "prior_covariance"}
    assert {k: v for k, v in base.items() if k not in changed} == {k: merged[k] for k in base if k not in changed}


def test_scenes32_evaluation_keeps_the_task_settings():
    """The task's evaluation extension sits after evaluate.yaml; the task's training override may come anywhere."""
    a = _merged("scenes32.yaml", "evaluate.yaml", "scenes32_evaluate.yaml")
    b = _merged("evaluate.yaml", "scenes32.yaml", "scenes32_evaluate.yaml")
    assert a == b
    assert a["ckpt_path"] == "$@ckpt_dir + '/checkpoint_final.pt'"
    assert a["evaluating"] == ["$@evaluate#runner(classes=@ged_classes)", "$@calibrate#runner()"]
