"""The old import paths of the split modules still give the same objects (the bundle's ``_target_`` paths, the MONAI
Label app and user scripts import them from there)."""

from __future__ import annotations

import importlib

import pytest

MOVED = {
    "monai_probunet.inference_transforms": (
        "monai_probunet.inference_preprocess",
        "monai_probunet.inference_postprocess",
        "monai_probunet.hypotheses_inferer",
    ),
    "monai_probunet.data.lidc_phantom": (
        "monai_probunet.data.phantom_render",
        "monai_probunet.data.phantom_tiles",
    ),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_reexports_every_public_name(old):
    """Every name in the new modules' ``__all__`` is in the old module's ``__all__`` and is the same object."""
    module = importlib.import_module(old)
    for new in MOVED[old]:
        source = importlib.import_module(new)
        for name in source.__all__:
            assert name in module.__all__, f"{old}.__all__ lacks {name} (from {new})"
            assert getattr(module, name) is getattr(source, name), f"{old}.{name} is not {new}.{name}"
    for name in module.__all__:
        assert hasattr(module, name), f"{old}.__all__ names {name}, which it does not define"


def test_bundle_targets_resolve_to_the_moved_classes():
    """inference.yaml's ``_target_`` paths (``monai_probunet.inference_transforms.X``) give the moved pieces."""
    from monai.bundle import ConfigParser

    from monai_probunet.hypotheses_inferer import HypothesesInferer

    parser = ConfigParser({"inferer": {"_target_": "monai_probunet.inference_transforms.HypothesesInferer",
                                       "num_samples": 3, "seed": 5}})
    inferer = parser.get_parsed_content("inferer")
    assert type(inferer) is HypothesesInferer
    assert (inferer.num_samples, inferer.seed) == (3, 5)
