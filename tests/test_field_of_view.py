"""RandFieldOfViewd: training crops whose borders lie outside the scan, as the inference path pads them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_probunet.data import RandFieldOfViewd


def _data():
    return {"image": torch.full((1, 64, 48), 0.7), "label": torch.ones(4, 64, 48)}


def test_bands_are_air_in_the_image_and_background_in_every_grader():
    t = RandFieldOfViewd(keys="image", label_keys="label", prob=1.0, side_prob=1.0, max_fraction=0.45)
    for seed in range(20):
        t.set_random_state(seed)
        out = t(_data())
        image, label = out["image"][0].numpy(), out["label"].numpy()
        outside = image == 0.0
        assert outside.any() and (image[~outside] == pytest.approx(0.7))
        # the same pixels are outside in the image and in all four grader masks
        assert all(np.array_equal(label[g] == 0, outside) for g in range(4))
        # bands only: every outside pixel lies in a full row or column band touching a border
        rows, cols = np.where(~outside)
        assert outside[: rows.min()].all() and outside[rows.max() + 1 :].all()
        assert outside[:, : cols.min()].all() and outside[:, cols.max() + 1 :].all()
        # the centre (the click) stays inside; no band wider than max_fraction of its axis
        assert not outside[32, 24]
        assert rows.min() <= int(0.45 * 64) and 64 - 1 - rows.max() <= int(0.45 * 64)
        assert cols.min() <= int(0.45 * 48) and 48 - 1 - cols.max() <= int(0.45 * 48)


def test_probability_and_input_untouched():
    data = _data()
    t = RandFieldOfViewd(keys="image", label_keys="label", prob=0.3)
    t.set_random_state(0)
    cut = sum(bool((t(data)["image"] == 0).any()) for _ in range(400))
    assert 0.2 < cut / 400 < 0.4  # prob 0.3, times P(at least one of 4 sides at 0.5) = 0.94
    assert (data["image"] == 0.7).all() and (data["label"] == 1).all()  # the cached input is not modified
    never = RandFieldOfViewd(keys="image", label_keys="label", prob=0.0)
    assert all(not (never(data)["image"] == 0).any() for _ in range(50))


def test_same_seed_same_bands():
    a = RandFieldOfViewd(keys="image", label_keys="label", prob=1.0).set_random_state(3)
    b = RandFieldOfViewd(keys="image", label_keys="label", prob=1.0).set_random_state(3)
    for _ in range(10):
        assert torch.equal(a(_data())["image"], b(_data())["image"])


def test_bad_max_fraction_refused():
    with pytest.raises(ValueError, match="max_fraction"):
        RandFieldOfViewd(keys="image", max_fraction=0.5)
