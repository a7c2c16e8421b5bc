"""Training and sampling speed of ProbUNet against a plain reference port, side by side in one process.

Every figure printed is measured in this run. The reference is written here the way a straightforward PyTorch port
of the paper's model does it: plain 3x3 convolutions + ReLU (no normalisation), 2x2 average pooling, bilinear
up-sampling, the latent tiled to the image grid and concatenated to the U-Net's features, f_comb's 1x1
convolutions, a binary mask with a summed BCE, and sampling by a Python loop over the samples. Both networks have
the paper's LIDC architecture: 128x128 crops, batch 8, filters 32-64-128-192, 3 convolutions per scale, latent 6,
f_comb 3 x 1x1 of width 32. Ours is the default ``ProbUNet`` (instance norm) driven by ``ProbUNetTrainer``'s own
training step, channels-first (the trainer's default) unless ``--channels-last``; the first lines say which
memory format the bundle's ``channels_last: auto`` would train ours in here (the trainer's start-up pass).

The timings of the two are interleaved (rounds of ``--iterations`` steps each, alternating) so that load from other
processes hits both alike; the spread of the per-round ratios is printed as the noise. On a GPU (``--device cuda``)
each call waits for the device before the clock is read. ``--arch paper`` times ``paper.yaml``'s settings instead
(128x128, batch 32, filters 32-64-128-256-512, ours without normalisation, as the paper); ``--all-variants`` times
ours in fp32 and bf16 autocast (where native), channels-first and channels_last, and ``--compile-all`` the same
four (beside them with both flags) with the trainer's training pass under ``torch.compile`` (``--compile-mode``,
e.g. ``reduce-overhead``: CUDA graphs, the bundle's default on a GPU; compiling takes minutes on a CPU).

    python benchmarks/train_speed.py                 # fp32, and bf16 autocast where the CPU has native bf16
    python benchmarks/train_speed.py --rounds 5 --iterations 3 --threads 2
    python benchmarks/train_speed.py --device cuda --arch paper --all-variants --iterations 20
    python benchmarks/train_speed.py --device cuda --arch paper --compile-all --iterations 20 --skip-sampling \
        --compile-mode reduce-overhead
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.engines import PrepareBatchExtraInput
from torch.distributions import Independent, Normal, kl_divergence

from monai_probunet.engines import ProbUNetTrainer, autocast_context
from monai_probunet.engines.precision import cpu_bf16_flags, cpu_model_name, explain_channels_last, native_bf16_text
from monai_probunet.io_utils import atomic_write_json
from monai_probunet.losses import ELBOLoss
from monai_probunet.networks import ProbUNet, unet_core

FILTERS = (32, 64, 128, 192)
LATENT = 6
SIZE = 128
BATCH = 8
BUNDLE = Path(__file__).resolve().parents[1] / "bundle" / "configs"


@dataclass(frozen=True)
class Arch:
    """The architecture timed: both networks get these filters, crop size, batch and latent size; ``norm`` and
    ``fcomb_channels`` are ours only (the reference never normalises; its f_comb is as wide as ``filters[0]``)."""

    name: str
    filters: tuple[int, ...] = FILTERS
    size: int = SIZE
    batch: int = BATCH
    latent: int = LATENT
    norm: str | None = "instance"
    fcomb_channels: int | None = None

    def text(self) -> str:
        return (f"{self.name}: {self.size}x{self.size}, batch {self.batch}, filters {'-'.join(map(str, self.filters))}, "
                f"latent {self.latent}, ours with norm {self.norm or 'none'}")  # fmt: skip


def paper_arch() -> Arch:
    """The architecture of ``paper.yaml`` (over ``train.yaml``), read from the bundle's configs."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "train.yaml"), str(BUNDLE / "paper.yaml")])
    crop = parser.get_parsed_content("crop_size")
    norm = parser.get_parsed_content("norm")
    return Arch(
        name="paper.yaml",
        filters=tuple(parser.get_parsed_content("channels")),
        size=int(crop[0]),
        batch=int(parser.get_parsed_content("batch_size")),
        latent=int(parser.get_parsed_content("latent_dim")),
        norm=None if norm in (None, "none") else norm,
        fcomb_channels=parser.get_parsed_content("fcomb_channels"),
    )


# --------------------------------------------------------------------------------------------------------------------
# the reference: a straightforward port


def _conv_stack(in_ch: int, out_ch: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.AvgPool2d(2, 2, ceil_mode=True)] if pool else []
    for i in range(3):
        layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RefEncoder(nn.Module):
    def __init__(self, in_ch: int, filters: tuple[int, ...]) -> None:
        super().__init__()
        chans = (in_ch, *filters)
        self.blocks = nn.ModuleList(_conv_stack(chans[i], chans[i + 1], pool=i > 0) for i in range(len(filters)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class RefUNet(nn.Module):
    def __init__(self, filters: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder = RefEncoder(1, filters)
        self.up = nn.ModuleList(
            _conv_stack(filters[i + 1] + filters[i], filters[i], pool=False) for i in range(len(filters) - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = self.up[i](torch.cat([x, feats[i]], 1))
        return x


class RefGaussian(nn.Module):
    def __init__(self, in_ch: int, filters: tuple[int, ...], latent: int) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = RefEncoder(in_ch, filters)
        self.head = nn.Conv2d(filters[-1], 2 * latent, 1)

    def forward(self, x: torch.Tensor) -> Independent:
        h = self.encoder(x)[-1]
        h = torch.mean(torch.mean(h, dim=2, keepdim=True), dim=3, keepdim=True)
        out = self.head(h).squeeze(-1).squeeze(-1).float()
        return Independent(Normal(out[:, : self.latent], torch.exp(out[:, self.latent :])), 1)


class RefFComb(nn.Module):
    def __init__(self, width: int, latent: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(width + latent, width, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )  # fmt: skip

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tiled = z[:, :, None, None].expand(-1, -1, *features.shape[2:]).to(features.dtype)
        return self.layers(torch.cat([features, tiled], 1))


class RefProbUNet(nn.Module):
    """The paper's model as a straightforward port writes it (binary output, summed BCE + KL)."""

    def __init__(self, filters: tuple[int, ...] = FILTERS, latent: int = LATENT) -> None:
        super().__init__()
        self.unet = RefUNet(filters)
        self.prior = RefGaussian(1, filters, latent)
        self.posterior = RefGaussian(2, filters, latent)
        self.fcomb = RefFComb(filters[0], latent)

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


def _batch(arch: Arch = Arch("port"), device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(arch.batch, 1, arch.size, arch.size, generator=g)
    label = (torch.rand(arch.batch, 1, arch.size, arch.size, generator=g) > 0.7).float()
    return {"image": image.to(device), "label": label.to(device)}


def synced(fn: Callable[[], None], device: str) -> Callable[[], None]:
    """``fn`` followed by a wait for the device's queued work, so that a host clock around it times the work."""
    if torch.device(device).type != "cuda":
        return fn

    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return run


def reference_step(precision: str, arch: Arch = Arch("port"), device: str = "cpu") -> Callable[[], None]:
    torch.manual_seed(0)
    net = RefProbUNet(arch.filters, arch.latent).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    batch = _batch(arch, device)

    def step() -> None:
        opt.zero_grad()
        with autocast_context(precision, device):
            loss = net.loss(batch["image"], batch["label"])
        loss.backward()
        opt.step()

    return synced(step, device)


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


def our_network(arch: Arch) -> ProbUNet:
    """Our ``ProbUNet`` with ``arch``'s filters, latent size, normalisation and f_comb width."""
    return ProbUNet(
        2, 1, 2, channels=arch.filters, latent_dim=arch.latent, norm=arch.norm, fcomb_channels=arch.fcomb_channels
    )


def our_step(
    precision: str,
    channels_last: bool,
    previous: bool = False,
    compiled: bool = False,
    arch: Arch = Arch("port"),
    device: str = "cpu",
    compile_mode: str = "default",
) -> tuple[Callable[[], None], bool]:
    """Our training step (``ProbUNetTrainer``'s own iteration) on ``arch``; returns it and whether it ran channels-last.

    ``compiled``: the trainer's ``torch_compile=compile_mode`` (its training pass under ``torch.compile``).
    """
    torch.manual_seed(0)
    net = our_network(arch).to(device)
    wrap = _previous_kernels(net) if previous else (lambda step: step)
    batch = _batch(arch, device)
    trainer = ProbUNetTrainer(
        device=torch.device(device),
        max_epochs=1,
        train_data_loader=[batch],
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-4),
        loss_function=ELBOLoss(),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
        decollate=False,
        precision=precision,
        channels_last=channels_last,
        torch_compile=compile_mode if compiled else False,
    )
    step = synced(wrap(lambda: trainer._iteration(trainer, batch)), device)
    return step, bool(trainer.channels_last)


def sampler(
    net: nn.Module, num_samples: int, precision: str, ours: bool, arch: Arch = Arch("port"), device: str = "cpu"
) -> Callable[[], None]:
    image = _batch(arch, device)["image"][:1]
    gen = torch.Generator().manual_seed(0)

    def run() -> None:
        with torch.inference_mode(), autocast_context(precision, device):
            if ours:
                net.sample(image, num_samples, generator=gen)
            else:
                net.sample(image, num_samples)

    return synced(run, device)


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


def device_text(device: str, threads: int) -> str:
    """What the figures were measured on: the CPU (and whether it computes bf16 natively) or the GPU."""
    cpu = f"CPU: {cpu_model_name()}; native bf16: {native_bf16_text()}; threads {threads}"
    if torch.device(device).type != "cuda":
        return f"{cpu}; torch {torch.__version__}"
    return (f"GPU: {torch.cuda.get_device_name(device)}; bf16 supported: {torch.cuda.is_bf16_supported()}; "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}; TF32 in "
            f"convolutions {torch.backends.cudnn.allow_tf32}, in matmuls {torch.backends.cuda.matmul.allow_tf32}; "
            f"cudnn.benchmark {torch.backends.cudnn.benchmark}; host {cpu}")  # fmt: skip


def training_steps(args: argparse.Namespace, arch: Arch, precisions: list[str]) -> dict[str, Callable[[], None]]:
    """The reference's and our training steps to time, by name."""
    device = args.device
    steps: dict[str, Callable[[], None]] = {"reference fp32": reference_step("fp32", arch, device)}
    if "bf16" in precisions:
        steps["reference bf16"] = reference_step("bf16", arch, device)
    layouts = (False, True) if args.all_variants or args.compile_all else (args.channels_last,)

    def compiled_step(precision: str, cl: bool) -> tuple[Callable[[], None], bool]:
        step, used_cl = our_step(precision, cl, compiled=True, arch=arch, device=device, compile_mode=args.compile_mode)
        t0 = time.perf_counter()
        step()
        print(f"ours {precision}, torch.compile: the first step took {time.perf_counter() - t0:.1f} s (compiling)")
        return step, used_cl

    compiled_name = ", torch.compile" + ("" if args.compile_mode == "default" else f" {args.compile_mode}")

    def layout_name(precision: str, used_cl: bool) -> str:
        return f"ours {precision}, {'channels_last' if used_cl else 'channels-first'}"

    for precision in precisions:
        for cl in layouts:
            if args.all_variants or not args.compile_all:  # eager (beside the compiled ones with both flags)
                step, used_cl = our_step(precision, cl, arch=arch, device=device)
                steps[layout_name(precision, used_cl)] = step
            if args.compile_all:
                step, used_cl = compiled_step(precision, cl)
                steps[layout_name(precision, used_cl) + compiled_name] = step
        if args.previous and precision == "fp32":
            steps["ours fp32, previous kernels"] = our_step(precision, args.channels_last, True, arch=arch)[0]
        if args.no_norm and arch.norm is not None:
            steps[f"ours {precision}, norm none"] = our_step(
                precision, args.channels_last, arch=replace(arch, norm=None), device=device
            )[0]
        if args.compile and not args.compile_all and precision == "fp32":
            steps["ours fp32" + compiled_name] = compiled_step(precision, args.channels_last)[0]
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (noise = spread over rounds)")
    parser.add_argument("--iterations", type=int, default=3, help="training steps per round and network")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--arch", choices=("port", "paper"), default="port",
        help="port: 128x128, batch 8, filters 32-64-128-192, ours with instance norm; paper: paper.yaml's settings",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=None, help="images per training step (default: the arch's)")
    parser.add_argument("--channels-last", action="store_true", help="ours in the channels-last memory format")
    parser.add_argument(
        "--all-variants", action="store_true",
        help="ours in fp32 and bf16 autocast (where native), channels-first and channels_last",
    )  # fmt: skip
    parser.add_argument(
        "--compile-all", action="store_true",
        help="ours under torch.compile in fp32 and bf16 autocast (where native), channels-first and channels_last",
    )  # fmt: skip
    parser.add_argument(
        "--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
        help="torch.compile's mode for --compile / --compile-all (reduce-overhead: CUDA graphs of the network)",
    )  # fmt: skip
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument(
        "--previous", action="store_true", help="also time ours with the kernels it used before its speed-ups (fp32)"
    )
    parser.add_argument(
        "--profile", action="store_true",
        help="also print the operators taking most CPU time in each training step (fp32, and bf16 where native)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="also time ours with the network under torch.compile (fp32)"
    )
    parser.add_argument(
        "--no-norm", action="store_true", help="also time ours without the normalisation (`norm: none`)"
    )
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args()
    cap = os.environ.get("ATEN_CPU_CAPABILITY")
    if cap and (args.compile or args.compile_all):
        # Inductor's on-disk cache does not tell kernels built under a capped ISA from native ones: one cache reused
        # across the two aborted with a heap corruption here, so each capability gets its own cache
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"torchinductor_{cap}"))
    torch.set_num_threads(args.threads)
    cuda = torch.device(args.device).type == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.exit(2, f"--device {args.device}: no CUDA device is available to torch {torch.__version__}\n")
    arch = paper_arch() if args.arch == "paper" else Arch("port")
    if args.batch:
        arch = replace(arch, batch=args.batch)
    header = device_text(args.device, args.threads)
    print(header)
    print(f"architecture {arch.text()}")
    native = torch.cuda.is_bf16_supported() if cuda else bool(cpu_bf16_flags())
    precisions = ["fp32"] + (["bf16"] if native else [])
    # what the trainer's `channels_last: auto` would pick for ours here (its start-up pass, before the timing)
    layouts = {p: explain_channels_last("auto", args.device, p, norm=arch.norm is not None)[1] for p in precisions}
    for precision, layout in layouts.items():
        print(f"channels_last auto, {precision}: {layout}")
    steps = training_steps(args, arch, precisions)
    cpu: dict = {}
    times = interleaved(steps, args.rounds, args.iterations, cpu)
    report: dict = {"device": header, "arch": asdict(arch), "auto_layout": layouts, "training": {}, "sampling": {}}
    print("\ntraining step: images/s (wall) and images per CPU-second (all threads); median over rounds, min-max in")
    print("brackets; speed vs the reference fp32 as the median (min-max) of the per-round ratios, wall and CPU time")
    for k, t in times.items():
        ips = [arch.batch / s for s in t]
        ipc = [arch.batch / s for s in cpu[k]]
        line = f"  {k:42s} {statistics.median(ips):7.2f} images/s ({min(ips):.2f}-{max(ips):.2f})"
        if not cuda:
            line += f"  {statistics.median(ipc):6.2f} images/CPU-s"
        entry = {"images_per_s": statistics.median(ips), "min": min(ips), "max": max(ips)}
        if k != "reference fp32":
            line += f"  vs reference fp32: wall {_ratio(t, times['reference fp32'])}"
            entry["vs_reference_fp32"] = statistics.median(r / o for o, r in zip(t, times["reference fp32"]))
            if not cuda:
                line += f", CPU {_ratio(cpu[k], cpu['reference fp32'])}"
        report["training"][k] = entry
        print(line)
    if args.profile:
        profile_steps({k: v for k, v in steps.items() if "previous" not in k}, args.iterations)
    if not args.skip_sampling:
        print(f"\nsampling one {arch.size}x{arch.size} image, 1 vs 16 hypotheses (ms; median over rounds)")
        torch.manual_seed(0)
        ref_net = RefProbUNet(arch.filters, arch.latent).to(args.device).eval()
        our_net = our_network(arch).to(args.device).eval()
        for precision in precisions:
            fns = {
                "reference 1": sampler(ref_net, 1, precision, False, arch, args.device),
                "ours 1": sampler(our_net, 1, precision, True, arch, args.device),
                "reference 16": sampler(ref_net, 16, precision, False, arch, args.device),
                "ours 16": sampler(our_net, 16, precision, True, arch, args.device),
            }
            t = interleaved(fns, args.rounds, 5)
            med = {k: 1000 * statistics.median(v) for k, v in t.items()}
            report["sampling"][precision] = med
            print(
                f"  {precision}: reference {med['reference 1']:.1f} / {med['reference 16']:.1f} ms "
                f"(16 vs 1: {med['reference 16'] / med['reference 1']:.2f}x); ours {med['ours 1']:.1f} / "
                f"{med['ours 16']:.1f} ms (16 vs 1: {med['ours 16'] / med['ours 1']:.2f}x); ours/reference speed at "
                f"16: {med['reference 16'] / med['ours 16']:.2f}x"
            )
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
