"""ModelGridd: the model's field around a centre near the image border, filled beyond the border by ``padding_mode``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_probunet.bundle_utils import ConfigValueError
from monai_probunet.inference_transforms import ModelGridd, inference_preprocessing

HU_WINDOW = (-1000.0, 400.0)


def _slice() -> MetaTensor:
    """A 90 x 80 slice at 1 mm whose HU grows along both axes (-900 + 4 i + 3 j): every border pixel differs; stored
    in the model's axis directions (a DICOM reader's: to the patient's left, posterior), so the crop is in its order."""
    i, j = np.meshgrid(np.arange(90), np.arange(80), indexing="ij")
    hu = (-900.0 + 4.0 * i + 3.0 * j).astype(np.float32)
    lps = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    return MetaTensor(torch.as_tensor(hu)[None], affine=lps)


def _crop(padding_mode: str, center: tuple[int, int]) -> dict:
    pre = inference_preprocessing(1.0, roi_size=64, hu_window=HU_WINDOW, padding_mode=padding_mode)
    return pre({"image": _slice(), "center": center, "world": False, "frame": "RAS"})


def _windowed(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0.0, 1.0)


@pytest.mark.parametrize("padding_mode", ["edge", "constant"])
def test_field_beyond_the_border(padding_mode):
    """A click 5 voxels from the low border of axis 0 and 6 from the high border of axis 1: the crop holds the image
    where the field overlaps it (exactly, at the image's own spacing), and beyond the border the nearest border
    pixel's value ("edge") or air, 0 after the window ("constant"); ``inside`` marks the image part."""
    d = _crop(padding_mode, (5, 73))
    crop, inside = d["model_input"][0].numpy(), d["inside"][0].numpy()
    assert crop.shape == inside.shape == (64, 64)
    rows, cols = np.arange(64) + (5 - 32), np.arange(64) + (73 - 32)  # the image index of every crop row / column
    # crop rows 0-26 lie before image row 0, crop columns 39-63 beyond image column 79
    assert inside.sum() == (64 - 27) * 39
    i, j = np.meshgrid(rows, cols, indexing="ij")
    on_image = (i >= 0) & (j < 80)
    np.testing.assert_array_equal(inside, on_image)
    np.testing.assert_allclose(crop[on_image], _windowed(-900.0 + 4.0 * i + 3.0 * j)[on_image], atol=1e-6)
    if padding_mode == "edge":
        expected = _windowed(-900.0 + 4.0 * np.clip(i, 0, 89) + 3.0 * np.clip(j, 0, 79))
    else:
        expected = np.zeros_like(crop)
    np.testing.assert_allclose(crop[~on_image], expected[~on_image], atol=1e-6)


def test_default_is_edge_and_unknown_mode_refused():
    """The default continues the border; an unknown mode is refused in one line naming the key and the choices."""
    np.testing.assert_array_equal(
        inference_preprocessing(1.0, roi_size=64, hu_window=HU_WINDOW)(
            {"image": _slice(), "center": (5, 73), "world": False, "frame": "RAS"})["model_input"],
        _crop("edge", (5, 73))["model_input"],
    )
    with pytest.raises(ConfigValueError, match=r"^padding_mode: expected one of edge, constant, got 'air'\.$"):
        inference_preprocessing(1.0, roi_size=64, hu_window=HU_WINDOW, padding_mode="air")
    with pytest.raises(ValueError, match="padding_mode"):
        ModelGridd("image", spacing=1.0, roi_size=64, padding_mode="reflect")


def test_bundle_key_reaches_the_transform():
    """inference.yaml's ``infer_padding_mode`` (edge by default) is the preprocessing's ModelGridd's."""
    from monai.bundle import ConfigParser

    from tests.conftest import TRAIN_YAML

    for value in (None, "constant"):
        parser = ConfigParser()
        parser.read_config([str(TRAIN_YAML), str(TRAIN_YAML.parent / "inference.yaml")])
        parser["bundle_root"] = str(TRAIN_YAML.parent.parent)
        if value is not None:
            parser["infer_padding_mode"] = value
        grids = [t for t in parser.get_parsed_content("preprocessing").transforms if isinstance(t, ModelGridd)]
        assert [g.padding_mode for g in grids] == [value or "edge"]
