"""ProbUNet, its parts and the deterministic U-Net: shapes, sampling cost, KL, initialisation."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from monai_probunet.networks import (
    DeterministicUNet,
    FComb,
    MHeadsUNet,
    ProbUNet,
    ProbUNetSampler,
    hypotheses_to_labels,
    segmentation_to_onehot,
)
from monai_probunet.networks.gaussian_encoder import LOG_SIGMA_BOUND
from monai_probunet.networks.latent_noise import prior_noise
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


@pytest.mark.parametrize("max_tile_elements", [1 << 22, 1])
def test_fcomb_in_pixel_tiles_has_the_gradients_of_one_pass(monkeypatch, max_tile_elements):
    """Several pixel tiles (a 20 x 20 grid, at least 64 pixels per tile), of both images together or one image each:
    the outputs and every gradient equal those of the concatenation then 1x1 convolutions, computed in one pass."""
    from monai_probunet.networks import fcomb

    monkeypatch.setattr(fcomb, "_TILE_ELEMENTS", 1)  # the smallest tile, 64 pixels: 7 tiles here
    monkeypatch.setattr(fcomb, "_MAX_TILE_ELEMENTS", max_tile_elements)  # 1: one image per tile
    torch.manual_seed(0)
    f = FComb(2, feature_channels=5, latent_dim=3, out_channels=2, hidden_channels=7)
    feats, z = torch.randn(2, 5, 20, 20, requires_grad=True), torch.randn(2, 3, 3, requires_grad=True)
    weights = torch.randn(2, 3, 2, 20, 20)
    tiled = f(feats, z)
    (tiled * weights).sum().backward()
    tiled_grads = [t.grad.clone() for t in (feats, z, *f.parameters())]
    for t in (feats, z, *f.parameters()):
        t.grad = None
    reference = torch.stack(
        [
            f.rest(torch.relu(f.first(torch.cat([feats, z[:, s, :, None, None].expand(-1, -1, 20, 20)], dim=1))))
            for s in range(3)
        ],
        dim=1,
    )
    torch.testing.assert_close(tiled, reference, rtol=1e-5, atol=1e-5)
    (reference * weights).sum().backward()
    for got, expected in zip(tiled_grads, [t.grad for t in (feats, z, *f.parameters())]):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_fcomb_tiles_pixels_on_the_cpu_only():
    """On the CPU a tile holds about 4 MB of float32 hidden activations (2^20 elements), and at most 16 MB (2^22) where
    a batch of many images x hypotheses needs at least 64 pixels each; on a GPU all pixels of all images."""
    from monai_probunet.networks.fcomb import images_per_tile, pixel_tile

    cpu = torch.device("cpu")
    assert pixel_tile(cpu, 32, 1, 32, 128 * 128) == 1024
    assert pixel_tile(cpu, 1, 16, 32, 128 * 128) == 2048
    assert pixel_tile(cpu, 8, 1, 128, 64 * 64) == 1024  # the CPU default's training step
    assert pixel_tile(cpu, 32, 16, 128, 64 * 64) == 64  # its validation batch: never below 64 pixels
    assert images_per_tile(cpu, 32, 16, 128, 64) == 32  # 2^22 elements, all images at once
    assert images_per_tile(cpu, 64, 16, 128, 64) == 32  # twice that: two tiles of 32 images
    assert images_per_tile(cpu, 8, 1, 128, 1024) == 8
    assert pixel_tile(torch.device("cuda"), 32, 1, 32, 128 * 128) == 128 * 128
    assert images_per_tile(torch.device("cuda"), 64, 16, 128, 64 * 64) == 64
    f = FComb(2, feature_channels=5, latent_dim=3, out_channels=2).to("meta")  # a non-CPU device: one pass
    assert f(torch.empty(2, 5, 20, 20, device="meta"), torch.empty(2, 3, 3, device="meta")).shape == (2, 3, 2, 20, 20)


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


def test_full_prior_kl_and_latents_are_the_closed_form():
    torch.manual_seed(0)
    net = ProbUNet(2, 1, 3, (4, 8), latent_dim=3, prior_covariance="full").eval()
    assert net.prior_net.head.out_channels == 2 * 3 + 3 and net.posterior_net.head.out_channels == 2 * 3
    image = torch.rand(2, 1, 16, 16)
    seg = torch.randint(0, 3, (2, 1, 16, 16))
    with torch.no_grad():
        net.prior_net.head.bias[6:] = torch.tensor([0.7, -0.4, 0.3])  # clearly non-diagonal L
        mu_p, L = net.prior_loc_scale_tril(image)
        mu_q, log_sigma_q = net.posterior_net.moments(net.posterior_input(image, seg))
        kl = net.kl(image, seg)
    assert torch.equal(L, L.tril()) and (L.diagonal(dim1=1, dim2=2) > 0).all() and L[:, 1, 0].abs().min() > 0.1
    # KL(N(mq, Sq) || N(mp, Sp)) = (tr(Sp^-1 Sq) + (mp - mq)^T Sp^-1 (mp - mq) - N + log|Sp| - log|Sq|) / 2
    cov_p = (L @ L.transpose(1, 2)).double()
    cov_q = torch.diag_embed(torch.exp(2 * log_sigma_q)).double()
    diff = (mu_p - mu_q).double().unsqueeze(-1)
    inv_p = torch.linalg.inv(cov_p)
    expected = 0.5 * (
        (inv_p @ cov_q).diagonal(dim1=1, dim2=2).sum(1)
        + (diff.transpose(1, 2) @ inv_p @ diff)[:, 0, 0]
        - 3
        + torch.logdet(cov_p)
        - torch.logdet(cov_q)
    )
    torch.testing.assert_close(kl.double(), expected, rtol=1e-4, atol=1e-5)
    # samples are z = mu + L eps with the generator's eps
    with torch.no_grad():
        s = net.sample(image, 4, generator=torch.Generator().manual_seed(3))
        eps = prior_noise(2, 4, 3, torch.Generator().manual_seed(3), method=net.prior_sampling)
        z = torch.stack([torch.stack([mu_p[b] + L[b] @ eps[b, i] for i in range(4)]) for b in range(2)])
        torch.testing.assert_close(s, net.decode(image, z), rtol=1e-4, atol=1e-5)
        # the exportable sampler draws the same latents (B = 1)
        exported = ProbUNetSampler(net, num_samples=4, seed=3)(image[:1])
        expected = net.sample(image[:1], 4, generator=torch.Generator().manual_seed(3)).flatten(1, 2)
        torch.testing.assert_close(exported, expected)
    with pytest.raises(ValueError, match="prior_covariance='full' needs a prior net"):
        ProbUNet(2, 1, 2, (4, 8), fixed_prior=True, prior_covariance="full")
    with pytest.raises(ValueError, match="prior_covariance must be one of"):
        ProbUNet(2, 1, 2, (4, 8), prior_covariance="low-rank")


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_prior_fitted_to_independent_flips(covariance):
    """Two classes flip independently (p 0.4 and 0.3) and the posteriors place the four grader maps at the corners
    ``b1 d1 + b2 d2`` of a skewed parallelogram. The prior that minimises the expected ``KL(Q || P)`` (exact
    expectation over the four corners) has the corners' mean and covariance when full; decoded by the parallelogram's
    own coordinates, its samples flip the two classes independently. The axis-aligned prior cannot hold the
    corners' covariance (correlation 0.59) and its samples tie the two flips (correlation about -0.3)."""
    from monai_probunet.networks import GaussianEncoder, latent_kl

    torch.manual_seed(0)
    d = torch.tensor([[2.0, 0.0], [1.6, 1.2]])  # d1, d2 (rows)
    bits = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    weights = torch.prod(torch.where(bits.bool(), torch.tensor([0.4, 0.3]), torch.tensor([0.6, 0.7])), dim=1)
    q = Independent(Normal(bits @ d, torch.full((4, 2), 0.1)), 1)
    prior_net = GaussianEncoder(2, 1, (4,), latent_dim=2, covariance=covariance)
    image = torch.ones(4, 1, 8, 8)  # the same image for all four graders
    opt = torch.optim.Adam(prior_net.parameters(), lr=0.05)
    for _ in range(600):
        opt.zero_grad()
        loss = (weights * latent_kl(q, prior_net(image))).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mu, L = prior_net.loc_scale_tril(image[:1])
        cloud_mean = weights @ (bits @ d)
        centred = bits @ d - cloud_mean
        cloud_cov = (weights[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0) + 0.01 * torch.eye(2)
        z = mu + torch.randn((200_000, 2), generator=torch.Generator().manual_seed(0)) @ L[0].T
        flips = (torch.linalg.solve(d.T, z.T).T > 0.5).float()  # coordinates in (d1, d2), decided at the midpoint
    torch.testing.assert_close(mu[0], cloud_mean, atol=0.02, rtol=0)
    r = torch.corrcoef(flips.T)[0, 1].item()
    if covariance == "full":
        torch.testing.assert_close(L[0] @ L[0].T, cloud_cov, atol=0.03, rtol=0)
        assert abs(r) < 0.05, r
    else:
        torch.testing.assert_close(torch.diag(L[0] ** 2), cloud_cov.diagonal(), atol=0.03, rtol=0)
        assert r < -0.2, r


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


@pytest.mark.parametrize("classes", [2, 5])
def test_foreground_prior_starts_every_pixel_at_that_probability(classes):
    x = torch.randn(3, 1, 16, 16)
    nets = [
        ProbUNet(2, 1, classes, channels=(4, 8), foreground_prior=0.01),
        ProbUNet(2, 1, classes, channels=(4, 8), latent_injection="input", foreground_prior=0.01),
        DeterministicUNet(2, 1, classes, channels=(4, 8), foreground_prior=0.01),
        MHeadsUNet(2, 1, classes, channels=(4, 8), num_heads=3, foreground_prior=0.01),
    ]
    for net in nets:
        torch.manual_seed(0)
        with torch.no_grad():
            probs = torch.softmax(net.sample(x, 4).float(), dim=2)  # B x S x C x H x W
        fg = probs[:, :, 1:].sum(2)
        # the weights stay orthogonal, so the logits scatter about the bias: the median pixel sits at the prior
        assert 0.005 < float(fg.median()) < 0.025 and float(fg.mean()) < 0.05, type(net).__name__
    torch.manual_seed(0)
    with torch.no_grad():  # the paper's initialisation: about even
        fg = 1 - torch.softmax(ProbUNet(2, 1, classes, channels=(4, 8)).sample(x, 4).float(), dim=2)[:, :, 0]
    assert 0.3 < float(fg.median()) < 0.9
    with pytest.raises(ValueError, match="foreground_prob must be in"):
        ProbUNet(2, 1, 2, channels=(4, 8), foreground_prior=1.0)


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


def test_posterior_input_follows_the_networks_memory_format():
    """A 1-channel image is contiguous in both formats: the posterior net's input must follow the weights it meets,
    so a channels-first model runs channels-first throughout."""
    m = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=2)
    image = torch.rand(2, 1, 16, 16)
    assert image.is_contiguous(memory_format=torch.channels_last)  # the ambiguity itself
    seg = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    x = m.posterior_input(image, seg)
    assert x.shape == (2, 3, 16, 16) and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    m.to(memory_format=torch.channels_last)
    x = m.posterior_input(image.contiguous(memory_format=torch.channels_last), seg)
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


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


def test_sampling_inferer_auto_follows_the_networks_memory_format_on_the_cpu():
    """``channels_last="auto"`` on a CPU feeds the inputs in the network's own format (the one the trainer measured
    and converted it to), not a second measurement; an explicit setting is obeyed."""
    from monai_probunet.engines import SamplingInferer

    formats: list[bool] = []

    class Recorder(ProbUNet):
        def sample(self, image, *args, **kwargs):
            formats.append(image.is_contiguous(memory_format=torch.channels_last) and not image.is_contiguous())
            return super().sample(image, *args, **kwargs)

    torch.manual_seed(0)
    net = Recorder(2, 2, 2, channels=(4, 8), latent_dim=2).eval()  # 2 channels: a 1-channel image is both formats
    x = torch.randn(2, 2, 8, 8)
    SamplingInferer(num_samples=2, seed=0, channels_last="auto")(x, net)
    SamplingInferer(num_samples=2, seed=0, channels_last=True)(x, net)
    net.to(memory_format=torch.channels_last)
    SamplingInferer(num_samples=2, seed=0, channels_last="auto")(x, net)
    SamplingInferer(num_samples=2, seed=0, channels_last=False)(x, net)
    assert formats == [False, True, True, False]


def test_prior_samples_in_training_pass_reach_the_prior_and_keep_the_reconstruction(model):
    image = torch.rand(2, 1, 16, 16)
    seg = (torch.rand(2, 1, 16, 16) > 0.8).long()
    model.train()
    torch.manual_seed(3)
    logits, kl = model(image, seg)
    torch.manual_seed(3)
    logits_s, kl_s, samples = model(image, seg, num_prior_samples=3)
    assert samples.shape == (2, 3, 2, 16, 16)
    assert torch.allclose(logits, logits_s, atol=1e-5) and torch.allclose(kl, kl_s)
    model.zero_grad()
    samples[:, :, 1].sum().backward()  # the samples alone: only the prior, U-Net and f_comb can explain them
    assert model.prior_net.head.weight.grad.abs().sum() > 0
    assert model.posterior_net.head.weight.grad is None or model.posterior_net.head.weight.grad.abs().sum() == 0


@pytest.mark.parametrize("injection", ["fcomb", "input"])
def test_sample_gradient_chooses_what_the_samples_train(injection):
    torch.manual_seed(0)
    kwargs = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": (4, 8), "latent_dim": 2,
              "latent_injection": injection}  # fmt: skip
    both = ProbUNet(**kwargs).train()
    nets = {"all": both}
    for mode in ("prior", "decoder"):
        nets[mode] = ProbUNet(**kwargs, sample_gradient=mode).train()
        nets[mode].load_state_dict(both.state_dict())
    prior_only = nets["prior"]
    image = torch.rand(2, 1, 16, 16)
    seg = (torch.rand(2, 1, 16, 16) > 0.8).long()
    outs = {}
    for name, net in nets.items():
        torch.manual_seed(3)
        outs[name] = net(image, seg, num_prior_samples=3)
    for name in ("prior", "decoder"):
        for a, b in zip(outs["all"], outs[name]):  # the same draws and logits either way
            assert torch.allclose(a, b, atol=1e-5)
    for name, net in nets.items():
        net.zero_grad()
        outs[name][2][:, :, 1].sum().backward()  # the samples' logits alone
        grads = {m: [p.grad for p in getattr(net, m).parameters()] for m in ("prior_net", "unet")}
        grads["decoder"] = [p.grad for p in (net.fcomb if injection == "fcomb" else net.head).parameters()]
        moved = {m: any(g is not None and g.abs().sum() > 0 for g in gs) for m, gs in grads.items()}
        trains_decoder = name in ("all", "decoder")
        expected = {"prior_net": name != "decoder", "unet": trains_decoder, "decoder": trains_decoder}
        assert moved == expected, (name, moved)
    prior_only.zero_grad()
    torch.manual_seed(3)
    logits, _, _ = prior_only(image, seg, num_prior_samples=3)
    logits[:, 1].sum().backward()  # the reconstruction still trains the decoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prior_only.unet.parameters() if p.ndim > 1)


def test_draw_temperature_spreads_the_decoder_only_draws_about_the_prior_mean():
    torch.manual_seed(0)
    net = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=3, sample_gradient="decoder").train()
    image = torch.rand(2, 1, 16, 16)
    seg = (torch.rand(2, 1, 16, 16) > 0.8).long()
    torch.manual_seed(3)  # the draws of the prior's own spread, in forward's order: posterior first, then prior
    q, p = net.posterior(image, seg), net.prior(image)
    q.rsample()
    z = p.rsample((3,)).transpose(0, 1)  # B x S x latent
    mean = p.mean.unsqueeze(1)
    for t, expected in ((1.0, z), (2.0, mean + 2.0 * (z - mean)), (0.0, mean.expand_as(z))):
        net.draw_temperature = t
        torch.manual_seed(3)
        _, _, samples = net(image, seg, num_prior_samples=3)
        assert torch.allclose(samples, net.decode(image, expected), atol=1e-5), t
    assert not torch.allclose(net.decode(image, z), net.decode(image, mean + 2.0 * (z - mean)), atol=1e-3)
    with pytest.raises(ValueError, match="draw_temperature must be >= 0"):
        ProbUNet(2, 1, 2, channels=(4, 8), sample_gradient="decoder", draw_temperature=-1.0)
    with pytest.raises(ValueError, match="needs sample_gradient='decoder'"):
        ProbUNet(2, 1, 2, channels=(4, 8), draw_temperature=2.0)


@pytest.mark.parametrize("pooling", ["mean_max", "mean_centre"])
def test_added_pooling_starts_as_the_papers_mean_pooling(pooling):
    torch.manual_seed(0)
    net = ProbUNet(2, 1, 2, channels=(8, 16, 32), latent_dim=4, encoder_pooling=pooling)
    image = torch.rand(3, 1, 16, 16)
    mean_only = copy.deepcopy(net.prior_net)
    mean_only.pooling = "mean"
    mean_only.head = torch.nn.Conv2d(32, 8, 1)
    mean_only.head.weight.data = net.prior_net.head.weight.data[:, :32].clone()
    mean_only.head.bias.data = net.prior_net.head.bias.data.clone()
    assert net.prior_net.head.weight.shape[1] == 64  # mean and max (or centre mean) of the 32 deepest channels
    assert torch.allclose(net.prior_net.head.weight[:, 32:], torch.zeros(8, 32))
    for got, want in zip(net.prior_net.moments(image), mean_only.moments(image)):
        assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sample_gradient": "both"}, "sample_gradient must be one of"),
        ({"fixed_prior": True, "sample_gradient": "prior"}, "needs a prior net"),
        ({"encoder_pooling": "median"}, "pooling must be one of"),
        ({"prior_pooling": "centre"}, "prior_pooling must be None or one of"),
        ({"fixed_prior": True, "prior_pooling": "mean_centre"}, "needs a prior net"),
    ],
)
def test_a_setting_the_network_cannot_honour_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProbUNet(2, 1, 2, channels=(4, 8), **kwargs)


def test_centre_pooling_averages_the_central_half_of_the_last_feature_map():
    torch.manual_seed(0)
    net = ProbUNet(2, 1, 2, channels=(8, 16, 32), latent_dim=4, encoder_pooling="mean_centre")
    torch.nn.init.normal_(net.prior_net.head.weight)  # the centre half's weights start at zero: make them count
    image = torch.rand(3, 1, 32, 32)
    encoder = net.prior_net
    with torch.no_grad():
        f = encoder.encoder(image)[-1]  # 3 x 32 x 8 x 8
        assert f.shape[2:] == (8, 8)
        pooled = torch.cat([f.mean(dim=(2, 3)), f[:, :, 2:6, 2:6].mean(dim=(2, 3))], dim=1)  # the central 4 x 4
        want = torch.nn.functional.linear(pooled, encoder.head.weight[:, :, 0, 0], encoder.head.bias)
        mu, log_sigma = encoder.moments(image)
        assert torch.allclose(mu, want[:, :4], atol=1e-5)
        assert torch.allclose(log_sigma, encoder._split(want)[1], atol=1e-5)


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_prior_temperature_scales_the_spread_of_the_draws_only(covariance):
    torch.manual_seed(0)
    kwargs = dict(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16), latent_dim=3,
                  prior_covariance=covariance)  # fmt: skip
    base = ProbUNet(**kwargs).eval()
    warm = ProbUNet(**kwargs, prior_temperature=1.5).eval()
    warm.load_state_dict(base.state_dict())  # a setting, not a weight: the state dict has no temperature
    assert "prior_temperature" not in base.state_dict() and float(warm.prior_temperature) == 1.5
    image, eps = torch.rand(2, 1, 16, 16), torch.randn(2, 5, 3)
    with torch.no_grad():
        mu = base.prior_latents(image, torch.zeros_like(eps))
        spread = base.prior_latents(image, eps) - mu
        assert torch.allclose(warm.prior_latents(image, eps) - mu, 1.5 * spread, atol=1e-5)
        assert torch.allclose(warm.prior_latents(image, eps), base.prior_latents(image, 1.5 * eps), atol=1e-5)
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.allclose(warm.sample(image, 4, generator=g1),
                              base.decode(image, base.prior_latents(image, 1.5 * prior_noise(2, 4, 3, g2, method=base.prior_sampling))))
        seg = (torch.rand(2, 1, 16, 16) > 0.7).long()
        torch.manual_seed(5)
        trained_base = base(seg=seg, image=image)
        torch.manual_seed(5)
        trained_warm = warm(seg=seg, image=image)
    assert all(torch.equal(a, b) for a, b in zip(trained_base, trained_warm))  # training ignores it
    with pytest.raises(ValueError, match="prior_temperature must be > 0"):
        ProbUNet(**kwargs, prior_temperature=0.0)
