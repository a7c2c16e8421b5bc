"""The ELBO loss: reduction conventions, ignore masks, KL weighting."""

from __future__ import annotations

import math

import pytest
import torch

from monai_probunet.losses import ELBOLoss


def test_ce_is_summed_over_pixels_and_averaged_over_batch():
    logits = torch.zeros(2, 2, 3, 3)  # uniform softmax: -log(1/2) per pixel
    target = torch.zeros(2, 1, 3, 3, dtype=torch.long)
    kl = torch.tensor([1.0, 3.0])
    terms = ELBOLoss(beta=0.5)((logits, kl), target)
    assert terms.ce.item() == pytest.approx(9 * math.log(2))
    assert terms.kl.item() == pytest.approx(2.0)
    assert terms.loss.item() == pytest.approx(9 * math.log(2) + 1.0)


def test_ignore_index_and_mask():
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[0, 1], [255, 1]]]])
    assert ELBOLoss(ignore_index=255)(logits, target).ce.item() == pytest.approx(3 * math.log(2))
    mask = torch.tensor([[[[1, 0], [0, 0]]]])
    terms = ELBOLoss(ignore_index=255)(logits, target, mask=mask)
    assert terms.ce.item() == pytest.approx(math.log(2)) and terms.kl.item() == 0.0


def test_deterministic_prediction_has_zero_kl_and_bad_target_is_clear():
    logits = torch.randn(2, 2, 4, 4)
    assert ELBOLoss()(logits, torch.zeros(2, 4, 4, dtype=torch.long)).kl.item() == 0.0
    with pytest.raises(ValueError, match="one label map per image"):
        ELBOLoss()(logits, torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="beta"):
        ELBOLoss(beta=-1)
