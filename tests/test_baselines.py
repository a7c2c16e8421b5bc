"""Baselines (Dropout U-Net, U-Net Ensemble, M-Heads, Image2Image VAE) and Appendix D ablations: training through
the common engine, sampling shapes and cost, the M-Heads loss, the fixed prior's KL, and the bundle configs."""

from __future__ import annotations

import hashlib
import math
import re

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import DataLoader
from monai.engines import PrepareBatchExtraInput
from monai.utils import set_determinism

from monai_probunet.engines import ProbUNetTrainer
from monai_probunet.losses import ELBOLoss, MHeadsLoss
from monai_probunet.networks import DeterministicUNet, MHeadsUNet, ProbUNet, UNetEnsemble
from monai_probunet.networks.latent_noise import prior_noise

from .conftest import REPO, run_bundle

BASELINES = REPO / "bundle" / "configs" / "baselines"
CHANNELS = (4, 8)
ABLATIONS = {
    "fixed_prior": dict(fixed_prior=True),
    "fixed_prior_context_free_posterior": dict(fixed_prior=True, posterior_context=False),
    "input_injection": dict(latent_injection="input"),
    "image2image_vae": dict(fixed_prior=True, posterior_context=False, latent_injection="input"),
}


def _batches(n: int = 64, size: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Noisy featureless images; the label is the left or the right half, with probability 1/2 each."""
    g = torch.Generator().manual_seed(seed)
    left = torch.zeros(1, size, size, dtype=torch.long)
    left[..., : size // 2] = 1
    return [
        {"image": 0.5 + 0.05 * torch.randn(1, size, size, generator=g),
         "label": left if torch.rand(1, generator=g).item() < 0.5 else 1 - left}
        for _ in range(n)
    ]  # fmt: skip


def _train(network: torch.nn.Module, loss_function: torch.nn.Module, iterations: int = 12) -> list[float]:
    losses: list[float] = []
    trainer = ProbUNetTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        epoch_length=iterations,
        train_data_loader=DataLoader(_batches(), batch_size=8, shuffle=True),
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=3e-3),
        loss_function=loss_function,
        prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
        decollate=False,
        precision="fp32",
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert all(math.isfinite(v) for v in losses), losses
    return losses


def _image_seg(b: int = 2, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 1, size, size, generator=g), (torch.rand(b, 1, size, size, generator=g) > 0.5).long()


# --- the default Probabilistic U-Net is unchanged ---------------------------------------------------------------


def test_default_probunet_unchanged():
    """Reference values computed with the model as it was before the ablation options were added."""
    torch.manual_seed(0)
    m = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=3)
    keys = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in m.state_dict().items())
    assert hashlib.sha1(keys.encode()).hexdigest() == "8ee405cffd5fbc1b7fa498307859ce5dfe97113c"
    assert m.head is None and m.fcomb is not None and m.prior_net is not None
    x, seg = _image_seg()
    torch.manual_seed(2)
    logits, kl = m(x, seg)
    m.prior_sampling = "iid"  # the paper's independent draws, as then (the stratified default: test_latent_noise.py)
    s = m.eval().sample(x, 3, generator=torch.Generator().manual_seed(3))
    close = dict(rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits.sum().item(), 106.22454833984375, **close)
    torch.testing.assert_close(
        logits[0, 1, 0, :4], torch.tensor([0.068047255, 0.136522442, 0.077603869, 0.061705872]), **close
    )
    torch.testing.assert_close(kl, torch.tensor([0.35233179, 0.39305851]), **close)
    torch.testing.assert_close(s.sum().item(), 356.47662353515625, **close)
    torch.testing.assert_close(
        s[1, 2, :, 5, :3], torch.tensor([[-0.00242323, -0.00242323, -0.00038308], [-0.00148324, -0.00148324, -0.00169797]]),
        rtol=1e-3, atol=1e-7,
    )
    # the explicit defaults build the same model
    torch.manual_seed(0)
    explicit = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=3, fixed_prior=False, posterior_context=True,
                        latent_injection="fcomb")  # fmt: skip
    torch.manual_seed(0)
    ref = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=3)
    for (k1, v1), (k2, v2) in zip(explicit.state_dict().items(), ref.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


# --- training through the common engine, and sampling shapes ----------------------------------------------------


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_ablations_train_and_sample(name):
    set_determinism(seed=0)
    net = ProbUNet(2, 1, 2, channels=CHANNELS, latent_dim=3, **ABLATIONS[name])
    losses = _train(net, ELBOLoss(beta=10.0 if name == "image2image_vae" else 1.0))
    assert np.mean(losses[-3:]) < losses[0], losses
    x, _ = _image_seg()
    samples = net.eval().sample(x, 5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 5, 2, 16, 16) and torch.isfinite(samples).all()


def test_dropout_unet_matches_paper_and_trains():
    # "the three inner-most encoder and decoder blocks", p = 0.5, with the paper's 5 scales (4 down-samplings)
    paper = DeterministicUNet(2, 1, 2, channels=(2, 4, 8, 16, 32), dropout=0.5)
    enc = [any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in b) for b in paper.unet.encoder.blocks]
    dec = [any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in b) for b in paper.unet.decoder.blocks]
    assert enc == [False, False, True, True, True] and dec == [False, True, True, True]  # decoder[3] is innermost
    set_determinism(seed=0)
    net = DeterministicUNet(2, 1, 2, channels=CHANNELS, dropout=0.5)
    losses = _train(net, ELBOLoss())
    assert np.mean(losses[-3:]) < losses[0], losses
    samples = net.eval().sample(_image_seg()[0], 4)
    assert samples.shape == (2, 4, 2, 16, 16) and not torch.equal(samples[:, 0], samples[:, 1])


def test_mheads_train_and_sample():
    set_determinism(seed=0)
    net = MHeadsUNet(2, 1, 2, channels=CHANNELS, num_heads=3)
    losses = _train(net, MHeadsLoss(eps=0.05))
    assert np.mean(losses[-3:]) < losses[0], losses
    x, _ = _image_seg()
    net.eval()
    heads = net(x)
    assert heads.shape == (2, 3, 2, 16, 16)
    features = net.unet(x)  # the heads as one matrix product == M separate 1x1 convolutions
    torch.testing.assert_close(heads, torch.stack([h(features) for h in net.heads], dim=1), rtol=1e-5, atol=1e-5)
    assert torch.equal(net.sample(x, 3), heads)
    cyc = net.sample(x, 5)  # S != M: heads drawn cyclically
    assert cyc.shape == (2, 5, 2, 16, 16) and torch.equal(cyc[:, 3], heads[:, 0]) and torch.equal(cyc[:, 4], heads[:, 1])
    assert torch.equal(net.sample(x, 2), heads[:, :2])
    with pytest.raises(ValueError, match="num_heads"):
        MHeadsUNet(num_heads=0)


def test_unet_ensemble_from_independently_trained_members(tmp_path):
    paths = []
    for seed in range(2):  # members trained independently, with different seeds
        set_determinism(seed=seed)
        member = DeterministicUNet(2, 1, 2, channels=CHANNELS)
        _train(member, ELBOLoss(), iterations=4)
        path = tmp_path / f"member_{seed}.pt"
        # a bundle model.pt (state dict) and a checkpoint_final.pt (dict with "model")
        torch.save(member.state_dict() if seed == 0 else {"model": member.state_dict()}, path)
        paths.append(path)
    ens = UNetEnsemble.from_checkpoints(paths, spatial_dims=2, in_channels=1, out_channels=2, channels=CHANNELS).eval()
    x, _ = _image_seg()
    members = [DeterministicUNet(2, 1, 2, channels=CHANNELS) for _ in paths]
    members[0].load_state_dict(torch.load(paths[0], weights_only=True))
    members[1].load_state_dict(torch.load(paths[1], weights_only=True)["model"])
    expected = torch.stack([m.eval()(x) for m in members], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(ens.sample(x, 2), expected)  # one hypothesis per member
        cyc = ens.sample(x, 3)
        assert cyc.shape == (2, 3, 2, 16, 16) and torch.equal(cyc[:, 2], cyc[:, 0])
        assert not torch.equal(cyc[:, 0], cyc[:, 1])
        torch.testing.assert_close(UNetEnsemble(members).sample(x, 2), expected)  # from modules
        torch.testing.assert_close(
            UNetEnsemble(paths, network_kwargs={"channels": CHANNELS}).eval().sample(x, 2), expected
        )
    with pytest.raises(ValueError, match="members"):
        UNetEnsemble([])


# --- the M-Heads loss, the fixed prior, input injection ----------------------------------------------------------


def test_mheads_loss_hand_computed():
    # head 0: uniform (ln 2 per pixel); head 1: p(class 1) = 3/4 everywhere (logits 0 and ln 3)
    head0 = torch.zeros(2, 2, 2)
    head1 = torch.stack([torch.zeros(2, 2), torch.full((2, 2), math.log(3.0))])
    logits = torch.stack([head0, head1])[None].repeat(2, 1, 1, 1, 1)  # B=2 x M=2 x C=2 x 2 x 2
    target = torch.tensor([[[[1, 1], [0, 1]]], [[[0, 0], [0, 0]]]])
    ce0 = 4 * math.log(2.0)
    ce1_img0 = 3 * math.log(4 / 3) + math.log(4.0)  # 2.249 < ce0 = 2.773: head 1 is best on image 0
    ce1_img1 = 4 * math.log(4.0)  # 5.545 > ce0: head 0 is best on image 1
    expected = (0.95 * ce1_img0 + 0.05 * ce0 + 0.95 * ce0 + 0.05 * ce1_img1) / 2
    terms = MHeadsLoss(eps=0.05)(logits, target)
    assert terms.loss.item() == pytest.approx(expected, rel=1e-6)
    assert terms.ce.item() == pytest.approx(expected, rel=1e-6) and terms.kl.item() == 0.0
    assert MHeadsLoss(eps=0.05)(logits, target[:, 0]).loss.item() == pytest.approx(expected, rel=1e-6)
    # one head: the plain pixel-summed cross-entropy
    assert MHeadsLoss()(logits[:, :1], target).loss.item() == pytest.approx(ce0, rel=1e-6)
    with pytest.raises(ValueError, match="eps"):
        MHeadsLoss(eps=1.0)
    with pytest.raises(ValueError, match="B x M x C"):
        MHeadsLoss()((logits[:, 0], torch.zeros(2)), target)


def test_fixed_prior_kl_is_analytic_kl_to_standard_normal():
    torch.manual_seed(0)
    m = ProbUNet(2, 1, 2, channels=CHANNELS, latent_dim=3, fixed_prior=True)
    assert m.prior_net is None and not any(k.startswith("prior_net") for k in m.state_dict())
    x, seg = _image_seg()
    mu, log_sigma = m.posterior_net.moments(m.posterior_input(x, seg))
    analytic = 0.5 * (mu**2 + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma).sum(dim=1)
    torch.testing.assert_close(m.kl(x, seg), analytic, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m(x, seg)[1], analytic, rtol=1e-5, atol=1e-6)
    p = m.prior(x)
    assert torch.equal(p.mean, torch.zeros(2, 3)) and torch.equal(p.stddev, torch.ones(2, 3))


def test_context_free_posterior_ignores_the_image():
    torch.manual_seed(0)
    m = ProbUNet(2, 1, 2, channels=CHANNELS, latent_dim=3, fixed_prior=True, posterior_context=False)
    assert m.posterior_net.encoder.in_channels == 2  # the one-hot segmentation only
    x, seg = _image_seg()
    q1, q2 = m.posterior(x, seg), m.posterior(torch.randn_like(x), seg)
    assert torch.equal(q1.mean, q2.mean) and torch.equal(q1.stddev, q2.stddev)


@pytest.mark.parametrize("fixed_prior", [False, True])
def test_input_injection_samples_in_one_batched_unet_call(fixed_prior):
    torch.manual_seed(0)
    m = ProbUNet(2, 1, 2, channels=CHANNELS, latent_dim=3, latent_injection="input", fixed_prior=fixed_prior).eval()
    assert m.fcomb is None and m.unet.encoder.in_channels == 1 + 3
    calls = []
    m.unet.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape))
    x, _ = _image_seg()
    with torch.no_grad():
        s = m.sample(x, 4, generator=torch.Generator().manual_seed(5))
    assert calls == [torch.Size([8, 4, 16, 16])]  # one U-Net call on B * S = 8 images
    assert s.shape == (2, 4, 2, 16, 16)
    labels = s.argmax(dim=2)
    assert all(not torch.equal(s[:, i], s[:, j]) for i in range(4) for j in range(i + 1, 4))
    assert labels.shape == (2, 4, 16, 16)
    # sample (b, s) is the U-Net on image b concatenated with the broadcast z[b, s]
    mu, log_sigma = m.prior_moments(x)
    z = mu[:, None] + torch.exp(log_sigma)[:, None] * prior_noise(
        2, 4, 3, torch.Generator().manual_seed(5), method=m.prior_sampling
    )
    with torch.no_grad():
        for b, i in ((0, 0), (1, 3)):
            inp = torch.cat([x[b : b + 1], z[b, i].view(1, 3, 1, 1).expand(1, 3, 16, 16)], dim=1)
            torch.testing.assert_close(s[b, i], m.head(m.unet(inp))[0], rtol=1e-4, atol=1e-5)


def test_bad_latent_injection_is_a_clear_error():
    with pytest.raises(ValueError, match="latent_injection must be one of"):
        ProbUNet(latent_injection="middle")


# --- bundle configs ----------------------------------------------------------------------------------------------

EXPECTED_CONFIGS = {
    "dropout_unet": (DeterministicUNet, {"dropout": 0.5}),
    "mheads": (MHeadsUNet, {"num_heads": 16}),
    "image2image_vae": (ProbUNet, {"fixed_prior": True, "posterior_context": False, "latent_injection": "input",
                                   "latent_dim": 3}),
    "fixed_prior": (ProbUNet, {"fixed_prior": True, "posterior_context": True, "latent_injection": "fcomb"}),
    "fixed_prior_context_free_posterior": (ProbUNet, {"fixed_prior": True, "posterior_context": False,
                                                      "latent_injection": "fcomb"}),
    "input_injection": (ProbUNet, {"fixed_prior": False, "posterior_context": False, "latent_injection": "input"}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIGS))
def test_override_configs_build_the_baselines(name):
    files = [str(REPO / "bundle" / "configs" / "train.yaml"), str(BASELINES / f"{name}.yaml")]
    parser = ConfigParser(ConfigParser.load_config_files(files))
    cls, attrs = EXPECTED_CONFIGS[name]
    net = parser.get_parsed_content("network_def")
    assert type(net) is cls
    for k, v in attrs.items():
        assert getattr(net, k) == v, (k, getattr(net, k))
    if getattr(net, "fcomb", None) is not None:  # the ablations keep the ProbUNet's f_comb width
        assert net.fcomb.first.out_channels == parser.get_parsed_content("fcomb_channels") == 128
    parser["bundle_root"] = "/b"
    assert parser.get_parsed_content("ckpt_dir") == f"/b/models/{name}"  # its own folder
    loss = parser.get_parsed_content("loss")
    if name == "mheads":
        assert isinstance(loss, MHeadsLoss) and loss.eps == 0.05
    else:
        assert isinstance(loss, ELBOLoss) and loss.beta == 10.0  # train.yaml's, and the Image2Image VAE's own


@pytest.mark.slow
def test_bundle_trains_mheads(tmp_path):
    config = str([str(REPO / "bundle" / "configs" / "train.yaml"), str(BASELINES / "mheads.yaml")])
    small = ("--dataset_name", "shapes", "--dataset_kwargs", "{'num_patients': 12, 'image_size': 32}",
             "--channels", "[8, 16, 32]",
             "--max_epochs", "1", "--val_interval", "1")  # fmt: skip
    proc = run_bundle(
        *small, "--ckpt_dir", str(tmp_path / "models"), "--dataset_dir", str(tmp_path / "data"), config_file=config
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    geds = [float(v) for v in re.findall(r"val_ged: ([0-9.]+)", log)]
    assert geds and all(0.0 <= g <= 2.0 for g in geds), log[-2000:]
    net = MHeadsUNet(2, 1, 2, channels=(8, 16, 32), num_heads=16)
    net.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
