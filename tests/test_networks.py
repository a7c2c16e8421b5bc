"""ProbUNet, its parts and the deterministic U-Net: shapes, sampling cost, KL, initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from monai_probunet.networks import DeterministicUNet, FComb, ProbUNet, hypotheses_to_labels, segmentation_to_onehot
from monai_probunet.networks.gaussian_encoder import LOG_SIGMA_BOUND
from monai_probunet.networks.unet_core import ConvBlock


@pytest.fixture
def model() -> ProbUNet:
    torch.manual_seed(0)
    return ProbUNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), latent_dim=6).eval()


def test_shapes(model):
    x = torch.randn(3, 1, 32, 24)
    seg = (torch.rand(3, 1, 32, 24) > 0.5).long()
    logits, kl = model(x, seg)
    assert logits.shape == (3, 2, 32, 24) and kl.shape == (3,)
    samples = model.sample(x, num_samples=5)
    assert samples.shape == (3, 5, 2, 32, 24)
    assert hypotheses_to_labels(samples).shape == (3, 5, 32, 24)
    assert model.reconstruct(x, seg, use_posterior_mean=True).shape == (3, 2, 32, 24)
    assert model.kl(x, seg).shape == (3,)


def test_odd_sizes_and_3d():
    m = ProbUNet(spatial_dims=3, in_channels=2, out_channels=3, channels=(4, 8), latent_dim=2)
    x = torch.randn(1, 2, 9, 10, 7)
    assert m.sample(x, 2).shape == (1, 2, 3, 9, 10, 7)


def test_sample_runs_unet_and_prior_once(model):
    calls = {"unet": 0, "prior": 0, "fcomb": 0}
    for name, mod in (("unet", model.unet), ("prior", model.prior_net.encoder), ("fcomb", model.fcomb)):
        mod.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    model.sample(torch.randn(2, 1, 16, 16), num_samples=16)
    assert calls == {"unet": 1, "prior": 1, "fcomb": 1}


def test_fcomb_equals_concatenation_then_1x1_convs():
    torch.manual_seed(0)
    f = FComb(2, feature_channels=5, latent_dim=3, out_channels=2, hidden_channels=7)
    feats, z = torch.randn(2, 5, 6, 4), torch.randn(2, 4, 3)
    out = f(feats, z)
    for b in range(2):
        for s in range(4):
            tiled = z[b, s].view(1, 3, 1, 1).expand(1, 3, 6, 4)
            h = torch.relu(f.first(torch.cat([feats[b : b + 1], tiled], dim=1)))
            torch.testing.assert_close(out[b, s], f.rest(h)[0], rtol=1e-5, atol=1e-5)


def test_same_seed_same_samples(model):
    x = torch.randn(2, 1, 16, 16)
    a = model.sample(x, 4, generator=torch.Generator().manual_seed(7))
    b = model.sample(x, 4, generator=torch.Generator().manual_seed(7))
    c = model.sample(x, 4, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_kl_of_identical_gaussians_is_zero():
    mu, sigma = torch.randn(4, 6), torch.rand(4, 6) + 0.1
    p = Independent(Normal(mu, sigma), 1)
    assert torch.allclose(kl_divergence(p, Independent(Normal(mu.clone(), sigma.clone()), 1)), torch.zeros(4))


def test_model_kl_zero_when_posterior_equals_prior(model):
    # copy the prior's weights into the posterior and zero the posterior's segmentation input weights
    x = torch.randn(2, 1, 16, 16)
    seg = (torch.rand(2, 1, 16, 16) > 0.5).long()
    with torch.no_grad():
        for (_, p_prior), (name, p_post) in zip(model.prior_net.named_parameters(), model.posterior_net.named_parameters()):
            if p_post.shape == p_prior.shape:
                p_post.copy_(p_prior)
            else:  # first conv: image channel from the prior, segmentation channels zeroed
                p_post.zero_()
                p_post[:, :1].copy_(p_prior)
    torch.testing.assert_close(model.kl(x, seg), torch.zeros(2), atol=1e-5, rtol=0)


def test_log_sigma_is_bounded():
    from monai_probunet.networks import GaussianEncoder

    enc = GaussianEncoder(2, 1, (4,), latent_dim=2)
    with torch.no_grad():
        enc.head.bias.fill_(1e6)
    mu, log_sigma = enc.moments(torch.randn(1, 1, 8, 8))
    assert torch.isfinite(torch.exp(log_sigma)).all() and log_sigma.max() <= LOG_SIGMA_BOUND


def test_norm_none_is_the_papers_plain_conv_relu():
    x = torch.randn(1, 2, 8, 8)
    plain = ConvBlock(2, 2, 3, num_convs=2, norm=None)
    normed = ConvBlock(2, 2, 3, num_convs=2)  # default: instance norm
    normed.load_state_dict(plain.state_dict())  # instance norm without affine adds no parameters
    expected = x
    for conv in plain.modules():
        if isinstance(conv, torch.nn.Conv2d):
            expected = torch.relu(conv(expected))
    torch.testing.assert_close(plain(x), expected)
    h = normed[0].conv(x)
    h = (h - h.mean(dim=(2, 3), keepdim=True)) / torch.sqrt(h.var(dim=(2, 3), unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(normed[0](x), torch.relu(h), rtol=1e-4, atol=1e-5)
    for off in (None, "none", "None"):
        assert not any(isinstance(m, torch.nn.InstanceNorm2d) for m in ProbUNet(2, 1, 2, (4, 8), 2, norm=off).modules())


def test_posterior_presence_sees_a_one_pixel_class():
    torch.manual_seed(0)
    net = ProbUNet(2, 1, 3, (4, 8), latent_dim=2, posterior_presence=True).eval()
    head = net.posterior_net.head
    assert head.in_channels == 8 + 3 and net.prior_net.head.in_channels == 8  # the prior net is unchanged
    with torch.no_grad():
        head.weight[:, :8].zero_()  # cut the pooled-feature path: only the presence inputs reach the head
    image = torch.rand(1, 1, 16, 16)
    seg = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    seg_one_pixel = seg.clone()
    seg_one_pixel[..., 5, 7] = 2
    mu, _ = net.posterior_net.moments(net.posterior_input(image, seg))
    mu_one_pixel, _ = net.posterior_net.moments(net.posterior_input(image, seg_one_pixel))
    # class 2's centred one-hot max goes from -0.5 (absent) to 0.5 (one pixel): mu moves by its weight column
    torch.testing.assert_close((mu_one_pixel - mu)[0], head.weight[:2, 8 + 2, 0, 0].detach())
    assert ProbUNet(2, 1, 3, (4, 8), latent_dim=2).posterior_net.head.in_channels == 8  # off by default
    from monai_probunet.networks import GaussianEncoder

    with pytest.raises(ValueError, match="presence_channels"):
        GaussianEncoder(2, 3, (4,), latent_dim=2, presence_channels=4)


def test_posterior_input_is_centred_onehot():
    seg = torch.tensor([[[[0, 1], [1, 255]]]])
    oh = segmentation_to_onehot(seg, 2)
    assert oh.shape == (1, 2, 2, 2)
    torch.testing.assert_close(oh[0, :, 0, 0], torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(oh[0, :, 1, 1], torch.tensor([-0.5, -0.5]))  # ignore label: no class


def test_orthogonal_init_and_small_biases(model):
    w = model.unet.encoder.blocks[1][0].conv.weight.flatten(1)  # out x (in * 9), rows orthonormal
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-5, rtol=0)
    biases = torch.cat([m.bias.flatten() for m in model.modules() if isinstance(m, torch.nn.Conv2d)])
    assert biases.abs().max() <= 2e-3 and 1e-4 < biases.std() < 2e-3


def test_wrong_channel_count_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"expects images of shape B x 1 x S x S \(in_channels=1\), got a tensor of shape \(1, 3, 16, 16\)"):
        model.sample(torch.randn(1, 3, 16, 16), 2)


def test_deterministic_unet():
    torch.manual_seed(0)
    m = DeterministicUNet(2, 1, 2, channels=(4, 8)).eval()
    x = torch.randn(2, 1, 16, 16)
    assert m(x, seg=None).shape == (2, 2, 16, 16)
    s = m.sample(x, 3)
    assert s.shape == (2, 3, 2, 16, 16) and torch.equal(s[:, 0], s[:, 2])
    drop = DeterministicUNet(2, 1, 2, channels=(4, 8, 16), dropout=0.5).eval()
    ds = drop.sample(x, 3)
    assert not torch.equal(ds[:, 0], ds[:, 1]) and not drop.training  # dropout on while sampling, mode restored


def test_channels_last_and_bf16_match_fp32(model):
    x = torch.randn(2, 1, 32, 32)
    ref = model.sample(x, 3, generator=torch.Generator().manual_seed(0))
    m = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.sample(x.contiguous(memory_format=torch.channels_last), 3, generator=torch.Generator().manual_seed(0))
    assert F.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0) > 0.99


def test_dropout_sampling_is_reproducible_with_a_generator():
    m = DeterministicUNet(2, 1, 2, channels=(4, 8, 16, 32), dropout=0.5).eval()
    x = torch.randn(1, 1, 16, 16)
    state = torch.get_rng_state()
    a = m.sample(x, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left untouched
    assert torch.equal(a, m.sample(x, 3, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(a, m.sample(x, 3, generator=torch.Generator().manual_seed(2)))


def test_sample_grid_writes_png(tmp_path):
    from PIL import Image

    from monai_probunet.visualize import sample_grid

    images = torch.rand(2, 1, 16, 16)
    graders = (torch.rand(2, 4, 16, 16) > 0.5).long()
    samples = (torch.rand(2, 6, 16, 16) > 0.5).long()
    sample_grid(images, graders, samples, tmp_path / "grid.png", titles=["a", "b"])
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]  # 11 panels wide, 2 rows high
    import pytest

    with pytest.raises(ValueError, match="expected images"):
        sample_grid(images, graders[:1], samples)


def test_sampling_inferer_reseeds_per_run():
    from ignite.engine import Engine

    from monai_probunet.engines import SamplingInferer

    torch.manual_seed(0)
    net = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=2).eval()
    x = torch.randn(2, 1, 8, 8)
    inferer = SamplingInferer(num_samples=5, seed=3, return_labels=False)
    outputs = []
    engine = Engine(lambda e, b: outputs.append(inferer(x, net)))
    inferer.attach(engine)
    engine.run([0, 1], max_epochs=1)
    engine.run([0, 1], max_epochs=1)
    assert torch.equal(outputs[0], outputs[2]) and torch.equal(outputs[1], outputs[3])
    assert not torch.equal(outputs[0], outputs[1])
