"""The ELBO loss: reduction conventions, ignore masks, KL weighting."""

from __future__ import annotations

import math

import pytest
import torch

from monai_probunet.losses import ELBOLoss, empty_sample_ce, energy_score


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


def _hard(masks: torch.Tensor) -> torch.Tensor:
    """Near-one-hot 2-class logits ``B x S x 2 x H x W`` for binary masks ``B x S x H x W``."""
    return torch.stack([1 - masks, masks], dim=2).float() * 40.0 - 20.0


def test_energy_score_is_zero_for_the_readers_own_answers_and_penalises_the_majority():
    a = torch.zeros(4, 4, dtype=torch.long)
    a[:2, :2] = 1  # reader 1: 4 pixels
    b = torch.zeros_like(a)  # reader 2: nothing
    graders = torch.stack([a, b])[None]  # 1 x 2 x H x W
    d = math.sqrt(2 * 4)  # 4 differing pixels, each differs in both one-hot channels
    both = energy_score(_hard(torch.stack([a, b])[None]), graders)
    assert both.item() == pytest.approx(0.0, abs=1e-2)
    # always the lesion: E||S - Y|| = d / 2, no spread between samples
    always = energy_score(_hard(torch.stack([a, a])[None]), graders)
    assert always.item() == pytest.approx(d / 2, abs=1e-2)
    # a missed lesion costs the square root of its area: a 4x larger lesion costs twice as much
    big = torch.ones(4, 4, dtype=torch.long)
    missed_small = energy_score(_hard(torch.stack([b, b])[None]), a[None, None])
    missed_big = energy_score(_hard(torch.stack([b, b])[None]), big[None, None])
    assert missed_big.item() == pytest.approx(2 * missed_small.item(), rel=1e-3)


def test_energy_score_leaves_out_ignored_pixels_and_needs_two_samples():
    graders = torch.tensor([[[[1, 255]]]])  # 1 x 1 x 1 x 2
    samples = _hard(torch.tensor([[[[1, 0]], [[1, 1]]]]))  # 1 x 2 x 1 x 2: they differ only where ignored
    assert energy_score(samples, graders, ignore_index=255).item() == pytest.approx(0.0, abs=1e-2)
    with pytest.raises(ValueError, match=">= 2 samples"):
        energy_score(samples[:, :1], graders)


def test_sample_weight_adds_the_energy_score_and_asks_for_what_it_needs():
    torch.manual_seed(0)
    logits, kl = torch.randn(2, 2, 4, 4), torch.tensor([1.0, 2.0])
    samples = torch.randn(2, 3, 2, 4, 4)
    graders = torch.randint(0, 2, (2, 4, 4, 4))
    target = graders[:, :1]
    plain = ELBOLoss()((logits, kl), target)
    terms = ELBOLoss(sample_weight=2.0)((logits, kl, samples), target, graders=graders)
    expected = energy_score(samples, graders).mean()
    assert terms.energy.item() == pytest.approx(expected.item())
    assert terms.loss.item() == pytest.approx(plain.loss.item() + 2.0 * expected.item(), rel=1e-5)
    assert ELBOLoss()((logits, kl, samples), target).loss.item() == pytest.approx(plain.loss.item())
    with pytest.raises(ValueError, match="graders"):
        ELBOLoss(sample_weight=1.0)((logits, kl, samples), target)
    with pytest.raises(ValueError, match="prior_samples"):
        ELBOLoss(sample_weight=1.0)((logits, kl), target, graders=graders)
    with pytest.raises(ValueError, match="sample_weight"):
        ELBOLoss(sample_weight=-1.0)


def test_empty_weight_scores_the_draws_only_where_every_grader_drew_nothing():
    # image 0: every grader empty; image 1: one grader of three drew a pixel, so its draws are not scored
    graders = torch.zeros(2, 3, 2, 2, dtype=torch.long)
    graders[1, 2, 0, 0] = 1
    samples = torch.zeros(2, 2, 2, 2, 2)  # uniform softmax: -log(1/2) per pixel
    samples[0, 1, 1] = 20.0  # image 0's second draw: foreground everywhere, -log(sigmoid(-20)) per pixel
    samples[1, :, 1] = 20.0  # image 1 shows a lesion in every draw: no cost
    per_draw = [4 * math.log(2), 4 * -torch.nn.functional.logsigmoid(torch.tensor(-20.0)).item()]
    expected = sum(per_draw) / 2 / 2  # the mean over image 0's 2 draws, over the batch of 2
    assert empty_sample_ce(samples, graders).item() == pytest.approx(expected, rel=1e-5)
    ignored = graders.clone()
    ignored[0, :, 1, 1] = 255  # left out of the sum, and not a lesion
    assert empty_sample_ce(samples, ignored, ignore_index=255).item() == pytest.approx(expected * 3 / 4, rel=1e-5)
    assert empty_sample_ce(samples[1:], graders[1:]).item() == 0.0  # no image without a lesion: 0, still a tensor
    logits, kl = torch.zeros(2, 2, 2, 2), torch.tensor([1.0, 2.0])
    plain = ELBOLoss()((logits, kl), graders[:, :1])
    terms = ELBOLoss(empty_weight=0.5)((logits, kl, samples), graders[:, :1], graders=graders)
    assert terms.loss.item() == pytest.approx(plain.loss.item() + 0.5 * expected, rel=1e-5)
    assert terms.energy is None  # no energy score unless sample_weight > 0
    with pytest.raises(ValueError, match="empty_weight > 0 needs the graders"):
        ELBOLoss(empty_weight=1.0)((logits, kl, samples), graders[:, :1])
    with pytest.raises(ValueError, match="empty_weight > 0 needs the network's prior samples: .* prior_samples >= 1"):
        ELBOLoss(empty_weight=1.0)((logits, kl), graders[:, :1], graders=graders)
    with pytest.raises(ValueError, match="empty_weight must be >= 0"):
        ELBOLoss(empty_weight=-1.0)
