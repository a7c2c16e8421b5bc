"""Training and sampling speed of ProbUNet against a plain reference port, side by side in one process.

Every figure printed is measured in this run. The reference is written here the way a straightforward PyTorch port
of the paper's model does it: plain 3x3 convolutions + ReLU (no normalisation), 2x2 average pooling, bilinear
up-sampling, the latent tiled to the image grid and concatenated to the U-Net's features, f_comb's 1x1
convolutions, a binary mask with a summed BCE, and sampling by a Python loop over the samples. Both networks have
the paper's LIDC architecture: 128x128 crops, batch 8, filters 32-64-128-192, 3 convolutions per scale, latent 6,
f_comb 3 x 1x1 of width 32. Ours is the default ``ProbUNet`` (instance norm) driven by ``ProbUNetTrainer``'s own
training step, channels-first (the trainer's default) unless ``--channels-last``.

The timings of the two are interleaved (rounds of ``--iterations`` steps each, alternating) so that load from other
processes hits both alike; the spread of the per-round ratios is printed as the noise.

    python benchmarks/train_speed.py                 # fp32, and bf16 autocast where the CPU has native bf16
    python benchmarks/train_speed.py --rounds 5 --iterations 3 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.engines import PrepareBatchExtraInput
from torch.distributions import Independent, Normal, kl_divergence

from monai_probunet.engines import ProbUNetTrainer, autocast_context
from monai_probunet.engines.precision import cpu_bf16_flags, cpu_model_name, native_bf16_text
from monai_probunet.losses import ELBOLoss
from monai_probunet.networks import ProbUNet, unet_core

FILTERS = (32, 64, 128, 192)
LATENT = 6
SIZE = 128
BATCH = 8


# --------------------------------------------------------------------------------------------------------------------
# the reference: a straightforward port


def _conv_stack(in_ch: int, out_ch: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AvgPool2d(2, 2, ceil_mode=True)] if pool else []
    for i in range(3):
        layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RefEncoder(nn.Module):
    def __init__(self, in_ch: int) -> None:
        super().__init__()
        chans = (in_ch, *FILTERS)
        self.blocks = nn.ModuleList(_conv_stack(chans[i], chans[i + 1], pool=i > 0) for i in range(len(FILTERS)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class RefUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = RefEncoder(1)
        self.up = nn.ModuleList(
            _conv_stack(FILTERS[i + 1] + FILTERS[i], FILTERS[i], pool=False) for i in range(len(FILTERS) - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        x = feats[-1]
        for i in range(len(FILTERS) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = self.up[i](torch.cat([x, feats[i]], 1))
        return x


class RefGaussian(nn.Module):
    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.encoder = RefEncoder(in_ch)
        self.head = nn.Conv2d(FILTERS[-1], 2 * LATENT, 1)

    def forward(self, x: torch.Tensor) -> Independent:
        h = self.encoder(x)[-1]
        h = torch.mean(torch.mean(h, dim=2, keepdim=True), dim=3, keepdim=True)
        out = self.head(h).squeeze(-1).squeeze(-1).float()
        return Independent(Normal(out[:, :LATENT], torch.exp(out[:, LATENT:])), 1)


class RefFComb(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(FILTERS[0] + LATENT, FILTERS[0], 1), nn.ReLU(inplace=True),
            nn.Conv2d(FILTERS[0], FILTERS[0], 1), nn.ReLU(inplace=True),
            nn.Conv2d(FILTERS[0], 1, 1),
        )  # fmt: skip

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tiled = z[:, :, None, None].expand(-1, -1, *features.shape[2:]).to(features.dtype)
        return self.layers(torch.cat([features, tiled], 1))


class RefProbUNet(nn.Module):
    """The paper's model as a straightforward port writes it (binary output, summed BCE + KL)."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = RefUNet()
        self.prior = RefGaussian(1)
        self.posterior = RefGaussian(2)
        self.fcomb = RefFComb()

    def loss(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        q = self.posterior(torch.cat([image, seg], 1))
        p = self.prior(image)
        features = self.unet(image)
        logits = self.fcomb(features, q.rsample())
        bce = F.binary_cross_entropy_with_logits(logits.float(), seg, reduction="sum")
        return (bce + kl_divergence(q, p).sum()) / image.shape[0]

    @torch.no_grad()
    def sample(self, image: torch.Tensor, num_samples: int) -> list[torch.Tensor]:
        p = self.prior(image)
        features = self.unet(image)
        return [self.fcomb(features, p.sample()) for _ in range(num_samples)]


# --------------------------------------------------------------------------------------------------------------------
# timed steps


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(BATCH, 1, SIZE, SIZE, generator=g)
    label = (torch.rand(BATCH, 1, SIZE, SIZE, generator=g) > 0.7).float()
    return {"image": image, "label": label}


def reference_step(precision: str) -> Callable[[], None]:
    torch.manual_seed(0)
    net = RefProbUNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    batch = _batch()

    def step() -> None:
        opt.zero_grad()
        with autocast_context(precision, "cpu"):
            loss = net.loss(batch["image"], batch["label"])
        loss.backward()
        opt.step()

    return step


def _previous_kernels(net: nn.Module) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Put back the kernels ``ProbUNet`` used before its speed-ups (``InstanceNorm`` modules, non-inplace ReLU,
    bilinear down-sampling); the same function, for the before/after comparison. Returns a wrapper for the step."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, nn.InstanceNorm2d(child.num_channels, eps=child.eps))
            elif isinstance(child, nn.ReLU):
                setattr(module, name, nn.ReLU())

    def bilinear(x: torch.Tensor, size=None) -> torch.Tensor:
        if size is None:
            return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    def wrap(step: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            saved = unet_core.resample_by_interpolation
            unet_core.resample_by_interpolation = bilinear
            try:
                step()
            finally:
                unet_core.resample_by_interpolation = saved

        return run

    return wrap


def our_step(
    precision: str, channels_last: bool, previous: bool = False, compiled: bool = False, norm: str | None = "instance"
) -> tuple[Callable[[], None], bool]:
    torch.manual_seed(0)
    net = ProbUNet(2, 1, 2, channels=FILTERS, latent_dim=LATENT, norm=norm)
    wrap = _previous_kernels(net) if previous else (lambda step: step)
    batch = _batch()
    trainer = ProbUNetTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[batch],
        network=torch.compile(net) if compiled else net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-4),
        loss_function=ELBOLoss(),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
        decollate=False,
        precision=precision,
        channels_last=channels_last,
    )
    return wrap(lambda: trainer._iteration(trainer, batch)), bool(trainer.channels_last)


def sampler(net: nn.Module, num_samples: int, precision: str, ours: bool) -> Callable[[], None]:
    image = _batch()["image"][:1]
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        with torch.inference_mode(), autocast_context(precision, "cpu"):
            if ours:
                net.sample(image, num_samples, generator=gen)
            else:
                net.sample(image, num_samples)

    return run


def profile_steps(steps: dict[str, Callable[[], None]], iterations: int, rows: int = 8) -> None:
    """Print the operators with the most self CPU time over ``iterations`` calls of each step (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    for name, step in steps.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(iterations):
                step()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        print(f"\nprofile of {name}, {iterations} steps: {total:.2f} s of self CPU time; the top operators (s):")
        print("  " + ", ".join(f"{e.key} {e.self_cpu_time_total / 1e6:.2f}" for e in events[:rows]))


def interleaved(fns: dict, rounds: int, iterations: int, cpu_times: dict | None = None) -> dict:
    """Wall seconds per call of each function, one median per round; the functions alternate within each round.

    ``cpu_times``, if given, receives the process CPU seconds per call (all threads) the same way: on a machine
    shared with other jobs the wall time depends on their load, the CPU time much less.
    """
    for fn in fns.values():  # warm-up (allocator, oneDNN primitive caches)
        fn()
        fn()
    times: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            per, per_cpu = [], []
            for _ in range(iterations):
                t0, c0 = time.perf_counter(), time.process_time()
                fns[k]()
                per.append(time.perf_counter() - t0)
                per_cpu.append(time.process_time() - c0)
            times[k].append(statistics.median(per))
            cpu[k].append(statistics.median(per_cpu))
    if cpu_times is not None:
        cpu_times.update(cpu)
    return times


def _ratio(ours: list[float], ref: list[float]) -> str:
    """Median and range over rounds of the speed ratio ``ref time / ours time`` (same round, interleaved)."""
    ratios = [r / o for o, r in zip(ours, ref)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (noise = spread over rounds)")
    parser.add_argument("--iterations", type=int, default=3, help="training steps per round and network")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--channels-last", action="store_true", help="ours in the channels-last memory format")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument(
        "--previous", action="store_true", help="also time ours with the kernels it used before its speed-ups (fp32)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print the operators taking most CPU time in each fp32 step"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time ours with the network under torch.compile (fp32)"
    )
    parser.add_argument(
        "--no-norm", action="store_true", help="also time ours without the normalisation (`norm: none`)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = cpu_bf16_flags()
    print(f"CPU: {cpu_model_name()}; native bf16: {native_bf16_text()}; "
          f"threads {args.threads}; torch {torch.__version__}")  # fmt: skip
    print(f"architecture: {SIZE}x{SIZE}, batch {BATCH}, filters {'-'.join(map(str, FILTERS))}, latent {LATENT}")
    cl = args.channels_last
    precisions = ["fp32"] + (["bf16"] if flags else [])
    ref32 = reference_step("fp32")
    steps: dict[str, Callable[[], None]] = {"reference fp32": ref32}
    for precision in precisions:
        step, used_cl = our_step(precision, cl)
        steps[f"ours {precision} ({'channels_last' if used_cl else 'channels-first'})"] = step
        if args.previous and precision == "fp32":
            steps["ours fp32, previous kernels"] = our_step(precision, cl, previous=True)[0]
        if args.no_norm:
            steps[f"ours {precision}, norm none"] = our_step(precision, cl, norm=None)[0]
        if args.compile and precision == "fp32":
            compiled = our_step(precision, cl, compiled=True)[0]
            t0 = time.perf_counter()
            compiled()
            print(f"torch.compile: the first fp32 step took {time.perf_counter() - t0:.1f} s (compiling)")
            steps["ours fp32, torch.compile"] = compiled
    if flags:
        steps["reference bf16"] = reference_step("bf16")
    cpu: dict = {}
    times = interleaved(steps, args.rounds, args.iterations, cpu)
    print("\ntraining step: images/s (wall) and images per CPU-second (all threads); median over rounds, min-max in")
    print("brackets; speed vs the reference fp32 as the median (min-max) of the per-round ratios, wall and CPU time")
    for k, t in times.items():
        ips = [BATCH / s for s in t]
        ipc = [BATCH / s for s in cpu[k]]
        line = f"  {k:34s} {statistics.median(ips):6.2f} images/s ({min(ips):.2f}-{max(ips):.2f})"
        line += f"  {statistics.median(ipc):6.2f} images/CPU-s"
        if k != "reference fp32":
            line += f"  vs reference fp32: wall {_ratio(t, times['reference fp32'])}"
            line += f", CPU {_ratio(cpu[k], cpu['reference fp32'])}"
        print(line)
    if args.profile:
        profile_steps({k: v for k, v in steps.items() if "fp32" in k and "previous" not in k}, args.iterations)
    if args.skip_sampling:
        return
    print("\nsampling one 128x128 image, 1 vs 16 hypotheses (ms; median over rounds)")
    torch.manual_seed(0)
    ref_net = RefProbUNet().eval()
    our_net = ProbUNet(2, 1, 2, channels=FILTERS, latent_dim=LATENT).eval()
    for precision in precisions:
        fns = {
            "reference 1": sampler(ref_net, 1, precision, False),
            "ours 1": sampler(our_net, 1, precision, True),
            "reference 16": sampler(ref_net, 16, precision, False),
            "ours 16": sampler(our_net, 16, precision, True),
        }
        t = interleaved(fns, args.rounds, 5)
        med = {k: 1000 * statistics.median(v) for k, v in t.items()}
        print(
            f"  {precision}: reference {med['reference 1']:.1f} / {med['reference 16']:.1f} ms "
            f"(16 vs 1: {med['reference 16'] / med['reference 1']:.2f}x); ours {med['ours 1']:.1f} / "
            f"{med['ours 16']:.1f} ms (16 vs 1: {med['ours 16'] / med['ours 1']:.2f}x); ours/reference speed at 16: "
            f"{med['reference 16'] / med['ours 16']:.2f}x"
        )


if __name__ == "__main__":
    main()
