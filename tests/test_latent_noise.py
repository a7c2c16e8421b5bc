"""The prior's noise: independent draws as before, or a stratified (scrambled Sobol) set of standard-normal draws."""

from __future__ import annotations

import pytest
import torch

from monai_probunet.networks import ProbUNet
from monai_probunet.networks.latent_noise import prior_noise


def test_iid_noise_is_the_generators_standard_normal_draws():
    got = prior_noise(3, 16, 6, torch.Generator().manual_seed(4), method="iid")
    want = torch.randn((3, 16, 6), generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_sobol_sets_are_stratified_in_every_latent_direction():
    eps = prior_noise(50, 16, 6, torch.Generator().manual_seed(0), method="sobol")
    u = torch.special.ndtr(eps.double())
    # each coordinate of the 16 points falls once into each sixteenth of (0, 1): exactly 8 on each side of the mean
    cells = (u * 16).floor().long()
    assert torch.equal(cells.sort(dim=1).values, torch.arange(16).view(1, 16, 1).expand(50, 16, 6))
    assert ((eps > 0).sum(dim=1) == 8).all()
    # the first two coordinates jointly: each of the 16 cells of a 4 x 4 grid holds one point
    quarters = (u[..., :2] * 4).floor().long()
    assert torch.equal((quarters[..., 0] * 4 + quarters[..., 1]).sort(dim=1).values, torch.arange(16).expand(50, 16))
    # independent draws are not: 16 of them split 8 / 8 only about one time in five
    iid = prior_noise(50, 16, 6, torch.Generator().manual_seed(0), method="iid")
    assert ((iid > 0).sum(dim=1) == 8).float().mean() < 0.5


def test_every_sobol_draw_is_standard_normal():
    eps = prior_noise(4000, 16, 6, torch.Generator().manual_seed(1), method="sobol")
    first = eps[:, 3, :]  # one hypothesis over images: its own scrambling each time
    assert first.mean(0).abs().max() < 0.06 and (first.std(0) - 1).abs().max() < 0.06
    # standard-normal quantiles: 15.9 % beyond one standard deviation
    assert ((first > 1).float().mean() - 0.1587).abs() < 0.01
    # images of one batch are scrambled apart, and the same generator state gives the same noise
    assert not torch.equal(eps[0], eps[1])
    again = prior_noise(4000, 16, 6, torch.Generator().manual_seed(1), method="sobol")
    assert torch.equal(eps, again)


def test_probunet_samples_with_either_noise_and_refuses_others():
    net = ProbUNet(channels=(4, 8), latent_dim=3, fcomb_channels=4).eval()
    image = torch.randn(2, 1, 16, 16)
    assert net.prior_sampling == "sobol"
    with torch.no_grad():
        a = net.sample(image, 8, generator=torch.Generator().manual_seed(0))
        net.prior_sampling = "iid"
        iid = net.sample(image, 8, generator=torch.Generator().manual_seed(0))
        net.prior_sampling = "sobol"
        b = net.sample(image, 8, generator=torch.Generator().manual_seed(0))
    assert a.shape == iid.shape == (2, 8, 2, 16, 16) and torch.equal(a, b) and not torch.equal(a, iid)
    with pytest.raises(ValueError, match="prior_sampling must be one of"):
        ProbUNet(channels=(4, 8), prior_sampling="halton")
