"""Learning-rate milestones and validation interval from the run length; training progress lines; precision log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from monai_probunet.engines import (
    explain_channels_last,
    explain_precision,
    lr_milestones,
    resolve_precision,
    validation_interval,
)
from monai_probunet.engines.precision import (
    BF16_MIN_SPEEDUP,
    CHANNELS_LAST_MIN_SPEEDUP,
    _pass_time_ratio,
    cpu_bf16_flags,
    cpu_bf16_speedup,
    cpu_channels_last_speedup,
    cpu_model_name,
    onednn_isa_cap,
)
from monai_probunet.handlers import TrainingProgress
from monai_probunet.handlers.progress import format_duration

from .conftest import REPO, TRAIN_YAML


@pytest.mark.parametrize(
    "max_epochs, fractions, expected",
    [
        (40, (0.6, 0.85), [24, 34]),
        (1, (0.6, 0.85), []),
        (2, (0.6, 0.85), [1]),
        (3, (0.6, 0.85), [1, 2]),
        (5, (0.6, 0.85), [3, 4]),
        (10, (0.05, 0.99), [1, 9]),
        (200, (0.8, 0.95), [160, 190]),
    ],
)
def test_lr_milestones_stay_inside_the_run(max_epochs, fractions, expected):
    assert lr_milestones(max_epochs, fractions) == expected


def test_lr_milestones_never_at_epoch_zero_or_past_the_end():
    for max_epochs in range(1, 301):
        ms = lr_milestones(max_epochs, (0.6, 0.85))
        assert all(1 <= m <= max_epochs - 1 for m in ms) and ms == sorted(set(ms)), max_epochs


def test_lr_milestones_reject_bad_input():
    with pytest.raises(ValueError, match="max_epochs"):
        lr_milestones(0, (0.5,))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        lr_milestones(10, (0.5, 1.2))
    with pytest.raises(ValueError, match="increasing"):
        lr_milestones(10, (0.8, 0.5))


def test_validation_interval_validates_first_within_an_eighth():
    assert [validation_interval(e) for e in (1, 5, 8, 15, 16, 40, 200)] == [1, 1, 1, 1, 2, 5, 25]
    for e in range(8, 300):
        assert validation_interval(e) <= e / 8


@pytest.mark.parametrize("max_epochs", [1, 2, 40])
def test_train_yaml_schedule_starts_at_the_configured_rate(max_epochs):
    """The bundle's scheduler: full learning rate for the first epoch, decays only inside the run."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_YAML))
    parser.update({"max_epochs": max_epochs, "device": "$torch.device('cpu')", "channels": [4, 8]})
    sched = parser.get_parsed_content("lr_scheduler")
    lr = parser.get_parsed_content("learning_rate")
    assert sched.optimizer.param_groups[0]["lr"] == pytest.approx(lr)
    assert sorted(sched.milestones) == lr_milestones(max_epochs, (0.6, 0.85))
    rates = []
    for _ in range(max_epochs):
        rates.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    assert rates[0] == pytest.approx(lr)
    if max_epochs == 40:
        assert rates[23] == pytest.approx(lr) and rates[24] == pytest.approx(0.2 * lr)
        assert rates[34] == pytest.approx(0.04 * lr)
    assert parser.get_parsed_content("val_interval") == validation_interval(max_epochs)


def test_scenes32_keeps_its_late_decay():
    parser = ConfigParser()
    parser.read_config([str(TRAIN_YAML), str(REPO / "bundle" / "configs" / "scenes32.yaml")])
    parser.update({"device": "$torch.device('cpu')", "channels": [4, 8]})
    assert sorted(parser.get_parsed_content("lr_scheduler").milestones) == [160, 190]


def test_explain_precision_names_the_choice_and_the_cpu():
    resolved, reason = explain_precision("auto", "cpu")
    assert resolved == resolve_precision("auto", "cpu")
    if cpu_bf16_flags():
        speedup = cpu_bf16_speedup()
        assert resolved == ("bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32")
        assert reason == (
            f"precision auto -> {resolved}: this CPU ({cpu_model_name()}) computes bf16 natively "
            f"({'/'.join(cpu_bf16_flags())}) and bf16 measured {speedup:.2f}x the speed of fp32 here (a U-Net "
            "training pass at start-up; bf16 where >= 1.1x)"
        )
    elif onednn_isa_cap():
        assert resolved == "fp32" and f"ONEDNN_MAX_CPU_ISA={onednn_isa_cap()} keeps this CPU" in reason
    else:
        assert reason.startswith(f"precision auto -> fp32: this CPU ({cpu_model_name()})")
        assert resolved == "fp32" and "no native bf16 (avx512_bf16/amx_bf16 missing)" in reason
    resolved, reason = explain_precision("fp32", "cpu")
    assert resolved == "fp32" and reason.startswith("precision fp32 as configured")
    with pytest.raises(ValueError, match="precision must be one of"):
        explain_precision("fp16", "cpu")


def test_onednn_isa_cap_makes_auto_pick_fp32():
    """``ONEDNN_MAX_CPU_ISA=AVX2`` (how a CPU with native bf16 computes as one without) makes ``auto`` pick fp32 and
    say why; it has to be set before oneDNN starts, hence a fresh interpreter."""
    code = (
        "from monai_probunet.engines.precision import cpu_bf16_flags, explain_precision\n"
        "print(cpu_bf16_flags()); print(explain_precision('auto', 'cpu')[1])"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    flags, reason = out.splitlines()
    assert flags == "[]"
    assert reason.startswith("precision auto -> fp32: ONEDNN_MAX_CPU_ISA=AVX2 keeps this CPU")
    assert reason.endswith("so bf16 would be emulated and slower")


@pytest.mark.parametrize(
    "measure", [cpu_bf16_speedup, lambda: cpu_channels_last_speedup("fp32")], ids=["bf16", "channels_last"]
)
def test_start_up_speedups_are_measured_once_and_leave_the_random_stream_alone(measure):
    """The start-up measurements behind ``auto`` on a CPU: a positive speed ratio, the same value on every call of a
    process (measured once), the caller's random numbers as without it, and measured from any calling context (both
    run ``_pass_time_ratio``, which sets up its own context: checked on the fp32 one, since bf16 passes are emulated,
    several times slower, on a CPU without native bf16)."""
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    _pass_time_ratio.cache_clear()
    first = measure()
    assert torch.equal(torch.rand(4), expected)
    assert first > 0 and measure() == first
    if measure is cpu_bf16_speedup:
        return
    # first called where an evaluation samples (no gradients, inference mode, under autocast): still measured
    for context in (torch.no_grad, torch.inference_mode, lambda: torch.autocast("cpu", dtype=torch.bfloat16)):
        _pass_time_ratio.cache_clear()
        with context():
            assert measure() > 0


def test_channels_last_auto_is_channels_last_on_cuda_and_where_measured_faster_on_the_cpu():
    from monai_probunet.bundle_utils import ConfigValueError
    from monai_probunet.engines import check_channels_last, resolve_channels_last

    for precision in ("fp32", "auto"):
        faster = cpu_channels_last_speedup(resolve_precision(precision, "cpu")) >= CHANNELS_LAST_MIN_SPEEDUP
        assert resolve_channels_last("auto", "cpu", precision) is faster
    assert resolve_channels_last("AUTO", torch.device("cuda:0")) is True
    assert resolve_channels_last("yes", "cpu") is True and resolve_channels_last(False, "cuda") is False
    assert check_channels_last(" Auto ") == "auto" and check_channels_last("no") is False
    with pytest.raises(ConfigValueError, match=r"--channels_last: expected a boolean .* or auto, got '2'"):
        resolve_channels_last("2", "cpu")
    with pytest.raises(ConfigValueError, match=r"--channels_last: expected a boolean .* or auto, got '2'"):
        check_channels_last("2")


def test_torch_compile_auto_is_cuda_graphs_on_cuda_only():
    from monai_probunet.bundle_utils import ConfigValueError
    from monai_probunet.engines import resolve_compile

    assert resolve_compile("auto", "cpu") is None
    assert resolve_compile(" Auto", torch.device("cuda:0")) == "reduce-overhead"
    assert resolve_compile(True, "cpu") == "default" and resolve_compile("no", "cuda") is None
    assert resolve_compile("max-autotune", "cpu") == "max-autotune"
    with pytest.raises(ConfigValueError, match=r"--torch_compile: expected a boolean .*, auto or a torch.compile mode"):
        resolve_compile("fast", "cpu")


def _tiny_trainer(optimizer=torch.optim.Adam, **kwargs):
    from monai.engines import PrepareBatchExtraInput

    from monai_probunet.engines import ProbUNetTrainer
    from monai_probunet.losses import ELBOLoss
    from monai_probunet.networks import ProbUNet

    torch.manual_seed(0)
    net = kwargs.pop("network", None) or ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=2)
    g = torch.Generator().manual_seed(1)
    data = [
        {"image": torch.rand(2, 1, 16, 16, generator=g), "label": (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()}
        for _ in range(2)
    ]
    trainer = ProbUNetTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=optimizer(net.parameters()),
        loss_function=ELBOLoss(),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
        decollate=False,
        precision="fp32",
        **kwargs,
    )
    return trainer, net


def test_compiled_trainer_keeps_the_plain_network():
    trainer, net = _tiny_trainer(torch_compile=True)  # compiled lazily: nothing compiles unless the trainer runs
    assert trainer.network is net and trainer.compile_mode == "default"
    assert trainer.train_network is not net and trainer.train_network._orig_mod is net
    assert not any("_orig_mod" in key for key in trainer.network.state_dict())  # checkpoints load as before
    eager, _ = _tiny_trainer(torch_compile="auto")  # auto on the CPU: eager
    assert eager.train_network is eager.network and eager.compile_mode is None


def test_trainer_logs_the_precision_and_memory_format_at_start(caplog):
    trainer, _ = _tiny_trainer(channels_last="auto")
    with caplog.at_level(logging.INFO):
        trainer.run()
    chosen, layout = explain_channels_last("auto", "cpu", "fp32")
    assert f"{explain_precision('fp32', 'cpu')[1]}; {layout}; not compiled" in caplog.text
    speedup = cpu_channels_last_speedup("fp32")
    assert trainer.channels_last is chosen is (speedup >= CHANNELS_LAST_MIN_SPEEDUP)
    assert layout == (
        f"memory format channels-{'last' if chosen else 'first'} (channels_last auto on cpu: channels-last measured "
        f"{speedup:.2f}x the speed of channels-first here in fp32, a U-Net training pass with instance norm at "
        "start-up; channels-last where >= 1.1x)"
    )
    assert explain_channels_last(True, "cpu") == (True, "memory format channels-last")


def test_channels_last_auto_measures_with_the_networks_own_normalisation(caplog):
    """The start-up pass behind ``channels_last: auto`` has the norm where the network has it, and none where it
    has none (``paper.yaml``): the norm's channels-last kernels are what makes channels-last slower on some CPUs."""
    from monai_probunet.engines.precision import network_normalises
    from monai_probunet.networks import ProbUNet

    assert network_normalises(ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=2))
    plain = ProbUNet(2, 1, 2, channels=(4, 8), latent_dim=2, norm="none")
    assert not network_normalises(plain)
    # the pass with and without the norm: two measurements, each once per process
    _pass_time_ratio.cache_clear()
    with_norm, without = cpu_channels_last_speedup("fp32"), cpu_channels_last_speedup("fp32", norm=False)
    assert _pass_time_ratio.cache_info().currsize == 2 and cpu_channels_last_speedup("fp32", norm=False) == without
    assert with_norm > 0 and without > 0
    trainer, _ = _tiny_trainer(channels_last="auto", network=plain)
    with caplog.at_level(logging.INFO):
        trainer.run()
    assert trainer.channels_last is (without >= CHANNELS_LAST_MIN_SPEEDUP)
    assert (f"channels-last measured {without:.2f}x the speed of channels-first here in fp32, a U-Net training pass "
            "without normalisation at start-up") in caplog.text


def _run_dummy(progress: TrainingProgress, epochs: int = 2, length: int = 4) -> Engine:
    engine = Engine(lambda e, b: {"loss": torch.tensor(0.5), "ce": 0.25, "kl": 0.125})
    progress.attach(engine)
    engine.run(range(length), max_epochs=epochs)
    return engine


def test_progress_in_a_file_is_one_line_per_interval(caplog):
    from monai_probunet.engines import loss_terms

    progress = TrainingProgress(interval_s=0, estimate_after=2, output_transform=loss_terms, tty=False, name="t.p")
    with caplog.at_level(logging.INFO, logger="t.p"):
        _run_dummy(progress)
    lines = [r.getMessage() for r in caplog.records if r.name == "t.p"]
    assert not any("\r" in line for line in lines)
    iteration_lines = [line for line in lines if " iteration " in line and "per training iteration" not in line]
    assert len(iteration_lines) == 8  # interval 0: every iteration
    assert iteration_lines[0].startswith("epoch 1/2 iteration 1/4 (25 %)")
    assert iteration_lines[-1].startswith("epoch 2/2 iteration 4/4 (100 %)")
    assert "loss 0.5, ce 0.25, kl 0.125" in iteration_lines[0]
    estimates = [line for line in lines if "per training iteration" in line]
    assert len(estimates) == 1 and "an epoch (4 iterations) takes about" in estimates[0]
    assert "the 2 epoch(s) to go" in estimates[0]
    epoch_lines = [line for line in lines if " took " in line]
    assert len(epoch_lines) == 2 and "left at this pace" in epoch_lines[0] and "left" not in epoch_lines[1]


def test_progress_interval_limits_the_lines(caplog):
    progress = TrainingProgress(interval_s=3600, estimate_after=1, tty=False, name="t.q")
    with caplog.at_level(logging.INFO, logger="t.q"):
        _run_dummy(progress, epochs=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "t.q"]
    assert len(lines) == 1 + 3  # the estimate and one line per epoch, no iteration line within the hour


def test_progress_on_a_terminal_uses_the_bar(caplog, capsys):
    with caplog.at_level(logging.INFO, logger="t.r"):
        _run_dummy(TrainingProgress(interval_s=0, tty=True, name="t.r"), epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "t.r"]
    assert not any(" iteration " in line and "per training" not in line for line in lines)  # the bar instead
    assert "Iteration: [1/4]" in capsys.readouterr().err


def test_format_duration():
    assert format_duration(4.25) == "4.2 s"
    assert format_duration(45) == "45 s"
    assert format_duration(129) == "2 min 09 s"
    assert format_duration(3900) == "1 h 05 min"


@pytest.mark.slow
def test_compiled_training_pass_matches_eager():
    """The trainer's iteration through ``torch.compile`` (compiling takes a few seconds for this tiny network on 2
    CPU cores) trains the same weights as the eager one: the compiled pass is the one the optimizer steps on. (Plain
    SGD: Adam's first steps move every weight by the learning rate whatever the size of its gradient, so rounding
    differences of 1e-7 in a near-zero gradient would show as whole steps.)"""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    losses, weights = {}, {}
    for mode in (False, True):
        trainer, net = _tiny_trainer(optimizer=lambda params: torch.optim.SGD(params, lr=0.1), torch_compile=mode)
        seen: list[float] = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda e, seen=seen: seen.append(float(e.state.output["loss"]))
        )
        trainer.run()
        losses[mode], weights[mode] = seen, [p.detach().clone() for p in net.parameters()]
    assert counters["stats"]["unique_graphs"] > 0  # the iteration ran the compiled network
    assert len(losses[True]) == 2 and losses[True] == pytest.approx(losses[False], rel=1e-5)
    initial = [p.detach() for p in _tiny_trainer()[1].parameters()]
    moved = sum((b - a).norm() ** 2 for a, b in zip(initial, weights[False])) ** 0.5
    apart = sum((c - b).norm() ** 2 for b, c in zip(weights[False], weights[True])) ** 0.5
    assert moved > 1e-3 and apart < 1e-4 * moved
