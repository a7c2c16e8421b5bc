"""Training on MONAI engines: the loss falls, and a ProbUNet learns a two-mode task a U-Net cannot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import CacheDataset, DataLoader
from monai.engines import PrepareBatchExtraInput
from monai.transforms import Compose, CopyItemsd, EnsureTyped, LoadImaged, ScaleIntensityRanged, SelectItemsd
from monai.utils import set_determinism

from monai_probunet.data import RandGraderd, load_datalist
from monai_probunet.engines import ProbUNetTrainer, loss_terms
from monai_probunet.handlers import KLWarmup
from monai_probunet.losses import ELBOLoss, MHeadsLoss
from monai_probunet.metrics import generalized_energy_distance
from monai_probunet.networks import DeterministicUNet, ProbUNet, hypotheses_to_labels


def _train(
    network, loader, iterations: int, lr: float = 1e-3, precision: str = "fp32", loss=None, outputs=None, **kwargs
) -> list[float]:
    losses: list[float] = []
    trainer = ProbUNetTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        epoch_length=iterations,
        train_data_loader=loader,
        network=network,
        optimizer=torch.optim.Adam(network.parameters(), lr=lr),
        loss_function=loss or ELBOLoss(beta=1.0),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
        decollate=False,
        precision=precision,
        **kwargs,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    if outputs is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(loss_terms(e.state.output)))
    trainer.run()
    return losses


def _shapes_loader(datalist, keep_graders: bool = False) -> DataLoader:
    transform = Compose(
        [
            LoadImaged(keys=["image", "label"], image_only=True, ensure_channel_first=True),
            SelectItemsd(keys=["image", "label"]),
            ScaleIntensityRanged(keys="image", a_min=-1000, a_max=400, b_min=0.0, b_max=1.0, clip=True),
            EnsureTyped(keys=["image", "label"], track_meta=False),
            *([CopyItemsd(keys="label", names="graders")] if keep_graders else []),
            RandGraderd(keys="label"),
        ]
    )
    ds = CacheDataset(load_datalist(datalist, "training"), transform, progress=False)
    return DataLoader(ds, batch_size=8, shuffle=True)


def test_loss_falls_on_shapes(tiny_shapes):
    set_determinism(seed=0)
    losses = _train(ProbUNet(2, 1, 2, channels=(8, 16, 32), latent_dim=4), _shapes_loader(tiny_shapes), iterations=40)
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:4]), losses


def test_sample_loss_scores_prior_draws_against_all_graders(tiny_shapes):
    set_determinism(seed=0)
    outputs: list[dict] = []
    net = ProbUNet(2, 1, 2, channels=(8, 16, 32), latent_dim=4)
    loss = ELBOLoss(beta=1.0, sample_weight=0.5)
    _train(net, _shapes_loader(tiny_shapes, keep_graders=True), 3, loss=loss, outputs=outputs, prior_samples=2)
    assert len(outputs) == 3
    for o in outputs:  # the logged loss is the ELBO plus the weighted energy score of the batch's prior draws
        assert o["energy"] > 0 and o["loss"] == pytest.approx(o["ce"] + o["kl"] + 0.5 * o["energy"], rel=1e-4)
    with pytest.raises(ValueError, match="'graders'.*CopyItemsd"):
        _train(net, _shapes_loader(tiny_shapes), 1, loss=loss, prior_samples=2)
    with pytest.raises(ValueError, match="DeterministicUNet draws no prior samples"):
        _train(DeterministicUNet(2, 1, 2, channels=(8, 16)), _shapes_loader(tiny_shapes, True), 1, loss=loss,
               prior_samples=2)


def test_empty_loss_scores_prior_draws_on_lesion_free_images_only():
    g = torch.Generator().manual_seed(0)
    lesion = torch.zeros(1, 16, 16, dtype=torch.long)
    lesion[:, 4:9, 4:9] = 1

    def batches(graders: torch.Tensor) -> list[dict[str, torch.Tensor]]:  # 4 images, the first grader's mask as label
        image = torch.rand(4, 1, 16, 16, generator=g)
        return [{"image": image, "label": graders[:, :1].clone(), "graders": graders}] * 3

    empty = torch.zeros(4, 3, 16, 16, dtype=torch.long)
    drawn = lesion.expand(4, 3, 16, 16).clone()
    drawn[:, 1:] = 0  # one grader of three drew the lesion: not lesion-free
    for graders, scored in ((empty, True), (drawn, False)):
        set_determinism(seed=0)
        outputs: list[dict] = []
        net = ProbUNet(2, 1, 2, channels=(8, 16), latent_dim=2, sample_gradient="decoder")
        _train(net, batches(graders), 3, loss=ELBOLoss(empty_weight=0.5), outputs=outputs, prior_samples=1)
        extra = [o["loss"] - o["ce"] - o["kl"] for o in outputs]  # the weighted term of the batch's prior draws
        assert len(extra) == 3 and "energy" not in outputs[0]
        # a draw is never exactly empty: about 0.5 x 256 pixels x -log p(background) on a lesion-free image
        assert all((e > 1.0) if scored else (abs(e) < 1e-3) for e in extra), (scored, extra)
    with pytest.raises(ValueError, match="'graders'.*CopyItemsd"):
        _train(net, [{"image": torch.rand(4, 1, 16, 16), "label": empty[:, :1]}], 1, loss=ELBOLoss(empty_weight=0.5),
               prior_samples=1)


def test_metatensor_batches_reach_the_network_as_plain_tensors_with_the_same_weights():
    """MONAI's random transforms return MetaTensors; the trainer hands the network and the loss their plain tensors
    (no metadata dispatch on every operation) and trains the same weights as from plain batches."""
    from monai.data import MetaTensor

    seen: list[type] = []

    class Recording(ProbUNet):
        def forward(self, x, seg=None, **kwargs):
            seen.extend([type(x), type(seg)])
            return super().forward(x, seg=seg, **kwargs)

    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(3, 4, 1, 16, 16, generator=g), (torch.rand(3, 4, 1, 16, 16, generator=g) > 0.7).long()
    weights = []
    for wrap in (MetaTensor, lambda t: t):
        set_determinism(seed=0)
        net = Recording(2, 1, 2, channels=(8, 16), latent_dim=2)
        _train(net, [{"image": wrap(i), "label": wrap(lab)} for i, lab in zip(images, labels)], 3)
        weights.append(net.state_dict())
    assert seen and set(seen) == {torch.Tensor}, seen
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name


def _two_mode_batches(n: int, size: int = 16, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Featureless images; a grader outlines the left half or the right half with probability 1/2 each."""
    g = torch.Generator().manual_seed(seed)
    left = torch.zeros(size, size, dtype=torch.long)
    left[:, : size // 2] = 1
    items = []
    for _ in range(n):
        image = 0.5 + 0.05 * torch.randn(1, size, size, generator=g)
        mode = left if torch.rand(1, generator=g).item() < 0.5 else 1 - left
        items.append({"image": image, "label": mode[None]})
    return items


@pytest.mark.slow
def test_probunet_learns_two_modes_unet_does_not():
    set_determinism(seed=0)
    loader = DataLoader(_two_mode_batches(256), batch_size=16, shuffle=True)
    pu = ProbUNet(2, 1, 2, channels=(8, 16), latent_dim=2)
    _train(pu, loader, iterations=400, lr=3e-3)
    unet = DeterministicUNet(2, 1, 2, channels=(8, 16))
    _train(unet, loader, iterations=200, lr=3e-3)

    size = 16
    left = torch.zeros(size, size, dtype=torch.long)
    left[:, : size // 2] = 1
    graders = torch.stack([left, 1 - left, left, 1 - left])[None]  # the true distribution, 2 draws per mode
    image = 0.5 + 0.05 * torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        samples = hypotheses_to_labels(pu.eval().sample(image, 100, generator=torch.Generator().manual_seed(0)))[0]
        det = hypotheses_to_labels(unet.eval().sample(image, 100))[0]
    is_left = (samples == left).float().mean(dim=(1, 2)) > 0.9
    is_right = (samples == 1 - left).float().mean(dim=(1, 2)) > 0.9
    assert (is_left | is_right).float().mean() > 0.9  # samples are clean modes, not blends
    assert 0.25 < is_left.float().mean() < 0.75  # both modes, at roughly their frequencies
    ged_pu = generalized_energy_distance(samples[None], graders).ged.item()
    ged_unet = generalized_energy_distance(det[None], graders).ged.item()
    assert ged_pu < 0.15 < 0.4 < ged_unet, (ged_pu, ged_unet)


def test_kl_warmup_ramps_beta_and_survives_resume():
    def run(start_epoch: int) -> list[float]:
        loss = ELBOLoss(beta=2.0)
        seen: list[float] = []
        engine = Engine(lambda e, b: seen.append(loss.beta))
        KLWarmup(loss, warmup_epochs=4).attach(engine)
        if start_epoch:
            engine.load_state_dict({"epoch": start_epoch, "epoch_length": 1, "max_epochs": 6})
        engine.run([0], max_epochs=6)
        return seen

    # epoch e uses beta * (e - 1) / 4 until the full beta = 2 from epoch 5 on
    assert run(0) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    # resumed after epoch 2: the ramp continues from epoch 3, not from 0
    assert run(2) == [1.0, 1.5, 2.0, 2.0]
    # the final value is the loss's configured beta, and 0 epochs leaves the loss untouched
    off = ELBOLoss(beta=0.7)
    engine = Engine(lambda e, b: None)
    KLWarmup(off, warmup_epochs=0).attach(engine)
    engine.run([0], max_epochs=2)
    assert off.beta == 0.7


def test_warmup_ramps_the_empty_draws_term_and_leaves_beta_alone():
    loss = ELBOLoss(beta=1.0, empty_weight=0.25)
    seen: list[tuple[float, float]] = []
    engine = Engine(lambda e, b: seen.append((loss.beta, loss.empty_weight)))
    KLWarmup(loss, warmup_epochs=2, weight="empty_weight").attach(engine)
    engine.run([0], max_epochs=4)
    assert seen == [(1.0, 0.0), (1.0, 0.125), (1.0, 0.25), (1.0, 0.25)]
    with pytest.raises(ValueError, match="empty_warmup_epochs"):
        KLWarmup(MHeadsLoss(), warmup_epochs=2, weight="empty_weight")


def _resumed_run(folder: Path, caplog, epochs: int, **settings) -> ProbUNetTrainer:
    """Train a tiny ProbUNet to ``epochs`` with ``settings`` (precision, channels_last), resuming from ``folder``'s
    ``checkpoint_last.pt`` where it exists; the log is captured at INFO."""
    import logging

    from monai_probunet.handlers import LastCheckpoint

    torch.manual_seed(0)
    data = [{"image": torch.rand(2, 1, 16, 16), "label": (torch.rand(2, 1, 16, 16) > 0.5).float()}]
    net = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=2)
    optimizer = torch.optim.Adam(net.parameters())
    trainer = ProbUNetTrainer(
        device="cpu", max_epochs=epochs, train_data_loader=data, network=net, optimizer=optimizer,
        loss_function=ELBOLoss(), prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
        decollate=False, **settings,
    )  # fmt: skip
    LastCheckpoint(folder, {"model": net, "optimizer": optimizer}, resume=True).attach(trainer)
    with caplog.at_level(logging.INFO):
        trainer.run()
    return trainer


def test_an_error_in_training_reaches_every_hook_and_a_users_error_logs_no_traceback(tmp_path, caplog):
    """ignite stops handing an exception on at the first EXCEPTION_RAISED handler that raises it (MONAI's
    StatsHandler, attached first by the bundle): the trainer's own hooks still see it (Ctrl-C restored, an MLflow
    run ended), and a user's error (a resume past --max_epochs) is one message, not a logged traceback."""
    import logging
    import signal

    from monai.handlers import StatsHandler

    from monai_probunet.bundle_utils import InputFileError
    from monai_probunet.handlers import LastCheckpoint

    def run(epochs: int, step=None, batches: int = 1) -> list[BaseException]:
        torch.manual_seed(0)
        net = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=2)
        optimizer = torch.optim.Adam(net.parameters())
        data = [{"image": torch.rand(2, 1, 16, 16), "label": (torch.rand(2, 1, 16, 16) > 0.5).float()}] * batches
        handlers = [StatsHandler(iteration_log=False, output_transform=loss_terms),  # first, as in the bundle
                    LastCheckpoint(tmp_path, {"model": net, "optimizer": optimizer}, resume=True)]
        trainer = ProbUNetTrainer(
            device="cpu", max_epochs=epochs, train_data_loader=data, network=net, optimizer=optimizer,
            loss_function=ELBOLoss(), prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
            decollate=False, precision="fp32", train_handlers=handlers, iteration_update=step,
        )  # fmt: skip
        seen: list[BaseException] = []
        trainer.on_error.append(seen.append)
        with caplog.at_level(logging.INFO):
            trainer.run()
        return seen

    before = signal.getsignal(signal.SIGINT)
    assert run(3) == []
    caplog.clear()
    with pytest.raises(InputFileError, match=r"holds epoch 3 of its run, past this command's --max_epochs 2: give "
                                             r"--max_epochs 3 \(the run's own\) to continue it"):
        run(2)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(InputFileError, match="holds a run of 1 iterations per epoch, and this command's data, "
                                             "--batch_size and processes give 2: resume with the run's own"):
        run(4, batches=2)  # other data: ignite would go on with the saved epoch length

    def boom(engine, batch):
        raise RuntimeError("boom in step")

    (tmp_path / "checkpoint_last.pt").unlink()
    with pytest.raises(RuntimeError, match="boom in step"):
        run(1, step=boom)
    assert signal.getsignal(signal.SIGINT) is before


def test_resume_keeps_the_precision_of_the_run_it_continues(tmp_path, caplog):
    """``precision: auto`` is a timing on a CPU, taken anew by each process: a resumed auto run computes in the
    precision the checkpoint was trained in; an explicit precision is kept, with a warning."""
    from monai_probunet.engines import resolve_precision

    assert _resumed_run(tmp_path, caplog, 1, precision="bf16").precision == "bf16"
    caplog.clear()
    assert _resumed_run(tmp_path, caplog, 2, precision="auto").precision == "bf16"
    if resolve_precision("auto", "cpu") == "fp32":
        assert "resume: precision bf16, as the run it continues (auto measured fp32 this time)." in caplog.text
    caplog.clear()
    assert _resumed_run(tmp_path, caplog, 3, precision="fp32").precision == "fp32"
    assert "resume: precision fp32 as configured, but the run it continues computed in bf16" in caplog.text


def test_resume_keeps_the_memory_format_of_the_run_it_continues(tmp_path, caplog):
    """``channels_last: auto`` is a timing on a CPU too: a resumed auto run computes in the memory format the checkpoint
    was trained in, and ends with the weights of the uninterrupted run; an explicit format is kept, with a warning."""
    from monai_probunet.engines import resolve_channels_last
    from monai_probunet.networks.utils import is_channels_last

    def run(channels_last: bool | str, epochs: int, folder: Path) -> ProbUNetTrainer:
        return _resumed_run(folder, caplog, epochs, precision="fp32", channels_last=channels_last)

    uninterrupted = run(True, 2, tmp_path / "once").network.state_dict()
    assert run(True, 1, tmp_path / "resumed").channels_last is True
    caplog.clear()
    resumed = run("auto", 2, tmp_path / "resumed")
    assert resumed.channels_last is True and is_channels_last(resumed.network)
    if not resolve_channels_last("auto", "cpu", "fp32"):
        assert "resume: memory format channels-last, as the run it continues (auto measured the other" in caplog.text
    for key, value in resumed.network.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key
    caplog.clear()
    kept = run(False, 3, tmp_path / "resumed")
    assert kept.channels_last is False and not is_channels_last(kept.network)
    assert "resume: memory format channels-first as configured, but the run it continues computed channels-last" in (
        caplog.text
    )


def test_kl_warmup_rejects_a_loss_without_beta():
    with pytest.raises(ValueError, match="kl_warmup_epochs"):
        KLWarmup(MHeadsLoss(), warmup_epochs=3)
