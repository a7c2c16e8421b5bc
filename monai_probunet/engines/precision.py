"""Mixed-precision, memory-format and compilation policy shared by the trainer and the sampling inferer."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from functools import cache, lru_cache

import torch

from ..bundle_utils import ConfigValueError, as_bool

__all__ = [
    "BF16_CPU_FLAGS",
    "BF16_MIN_SPEEDUP",
    "CHANNELS_LAST_MIN_SPEEDUP",
    "COMPILE_MODES",
    "PRECISIONS",
    "autocast_context",
    "check_channels_last",
    "cpu_bf16_flags",
    "cpu_bf16_speedup",
    "cpu_channels_last_speedup",
    "cpu_model_name",
    "explain_channels_last",
    "explain_precision",
    "native_bf16_text",
    "network_normalises",
    "onednn_isa_cap",
    "resolve_channels_last",
    "resolve_compile",
    "resolve_precision",
    "share_cpu_speedups",
]

PRECISIONS = ("auto", "fp32", "bf16")

#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AVX512-BF16 dot products, AMX tiles
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

#: ``auto`` picks bf16 on a CPU with native bf16 only where it measured at least this much faster than fp32
#: (:func:`cpu_bf16_speedup`): with AVX512-BF16 but no AMX bf16 can be slower (0.64x measured, docs/benchmarks.md)
BF16_MIN_SPEEDUP = 1.1

#: ``channels_last: auto`` picks channels-last on a CPU only where it measured at least this much faster than
#: channels-first (:func:`cpu_channels_last_speedup`); on the Intel Xeon with AMX measured here it is not
#: (docs/benchmarks.md), and a margin above 1 keeps a run's choice from flipping between runs
CHANNELS_LAST_MIN_SPEEDUP = 1.1


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`), or ``"unknown CPU"``."""
    for line in _cpuinfo().splitlines():
        if line.lower().startswith("model name") and ":" in line:
            return " ".join(line.split(":", 1)[1].split())
    return platform.processor() or "unknown CPU"


def onednn_isa_cap() -> str | None:
    """``ONEDNN_MAX_CPU_ISA`` where it stops oneDNN's bf16 kernels (e.g. ``"AVX2"``), else ``None``.

    Setting ``ONEDNN_MAX_CPU_ISA=AVX2`` (with ``ATEN_CPU_CAPABILITY=avx2``) makes a CPU with native bf16 compute as
    one without it, e.g. to measure what the slower kind of CPU runs.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if not cap:
        return None
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return cap if supported is not None and not supported() else None


def cpu_bf16_flags() -> list[str]:
    """The native-bf16 flags (:data:`BF16_CPU_FLAGS`) this CPU reports; empty where it has none (or no cpuinfo) or
    where :func:`onednn_isa_cap` keeps oneDNN from using them."""
    if onednn_isa_cap():
        return []
    flags: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith("flags") and ":" in line:
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in BF16_CPU_FLAGS if f in flags]


def native_bf16_text() -> str:
    """Whether this CPU computes bf16 natively, for a benchmark's header: ``"yes (avx512_bf16/amx_bf16)"``,
    ``"no"``, or ``"no (ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2)"`` where it is made to compute as a CPU
    without it."""
    flags = cpu_bf16_flags()
    if flags:
        return f"yes ({'/'.join(flags)})"
    if onednn_isa_cap():
        aten = os.environ.get("ATEN_CPU_CAPABILITY")
        return f"no (ONEDNN_MAX_CPU_ISA={onednn_isa_cap()}" + (f", ATEN_CPU_CAPABILITY={aten})" if aten else ")")
    return "no"


def _cpu_has_native_bf16() -> bool:
    return bool(cpu_bf16_flags())


@cache
def _pass_time_ratio(threads: int, first: tuple[bool, bool], second: tuple[bool, bool], norm: bool = True) -> float:
    """``time(first) / time(second)`` of a training pass of a small U-Net on the CPU, each setting a pair
    ``(bf16 autocast, channels-last)``, with the package's instance norm after every convolution or (``norm``
    false) none; ``threads`` only keys the cache (the pass runs on the current threads)."""
    from ..networks.unet_core import DEFAULT_NORM, UNetCore  # engines import networks, never the reverse

    times: dict[tuple[bool, bool], list[float]] = {first: [], second: []}
    # a training pass wherever the first call comes from (an evaluation's no_grad or inference_mode); the caller's
    # random stream stays as it was
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        nets = {False: UNetCore(2, 1, (16, 32, 64), 3, norm=DEFAULT_NORM if norm else None)}
        nets[True] = UNetCore(2, 1, (16, 32, 64), 3, norm=DEFAULT_NORM if norm else None).to(
            memory_format=torch.channels_last)
        x = torch.rand(4, 1, 64, 64)
        for rep in range(7):  # 2 warm-up passes each, then 5 timed, the two settings alternating
            for bf16, channels_last in (first, second):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = nets[channels_last](x.contiguous(memory_format=torch.channels_last) if channels_last else x)
                out.float().square().mean().backward()
                if rep >= 2:
                    times[(bf16, channels_last)].append(time.perf_counter() - t0)
    return min(times[first]) / min(times[second])


#: rank 0's measurements in a distributed run (:func:`share_cpu_speedups`), used by every rank instead of its own
_shared_speedups: dict[str, float] = {}


def cpu_bf16_speedup() -> float:
    """How much faster bf16 autocast trains than fp32 on this CPU (``fp32 time / bf16 time``), measured once per
    process and thread count: the forward and backward pass of a small U-Net of this package's blocks (16-32-64
    channels, 4 images of 64x64, about 0.5 s on 2 cores), fp32 and bf16 alternating, the fastest of 5 each.

    Native bf16 is not always faster: oneDNN's AVX512-BF16 kernels (without AMX) measured slower than fp32 on an
    Intel Xeon, faster on an AMD EPYC; AMX about 2x faster. The caller's random number stream is left untouched.
    """
    if "bf16" in _shared_speedups:
        return _shared_speedups["bf16"]
    return _pass_time_ratio(torch.get_num_threads(), (False, False), (True, False))


def cpu_channels_last_speedup(precision: str, norm: bool = True) -> float:
    """How much faster the channels-last memory format trains than channels-first on this CPU (``channels-first
    time / channels-last time``) at ``precision`` (``"fp32"`` or ``"bf16"`` autocast), measured as
    :func:`cpu_bf16_speedup` is (once per process, thread count, precision and ``norm``; the same small U-Net pass,
    with the instance norm after every convolution or, ``norm`` false, none).

    Which is faster depends on the CPU, the precision and the norm: oneDNN's kernels for the two formats differ, and
    the norm's channels-last kernels are slower than its channels-first ones (docs/benchmarks.md: on an AMD EPYC
    channels-last measured 0.9-1.0x with the norm, 1.2-1.4x without).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}.")
    key = _channels_last_key(precision, norm)
    if key in _shared_speedups:
        return _shared_speedups[key]
    bf16 = precision == "bf16"
    return _pass_time_ratio(torch.get_num_threads(), (bf16, False), (bf16, True), norm)


def _channels_last_key(precision: str, norm: bool) -> str:
    return f"channels_last_{precision}" + ("" if norm else "_no_norm")


def network_normalises(network: torch.nn.Module) -> bool:
    """Whether ``network`` has a normalisation layer (batch, instance, group or layer norm), as ``train.yaml``'s
    networks do and ``paper.yaml``'s do not: the start-up pass of ``channels_last: auto`` then measures with the
    norm (:func:`cpu_channels_last_speedup`)."""
    kinds = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)
    return any(isinstance(m, kinds) for m in network.modules())


def share_cpu_speedups() -> dict[str, float]:
    """Rank 0's start-up measurements for every rank of the process group, so that ``precision: auto`` and
    ``channels_last: auto`` pick the same on all of them (each rank timing on its own could differ, the ranks sharing
    the cores; DistributedDataParallel needs the same memory format everywhere): :func:`cpu_bf16_speedup` on a CPU
    with native bf16, :func:`cpu_channels_last_speedup` for each precision the CPU can run natively, with and
    without the norm. A collective: every rank calls it at the same point
    (:func:`~monai_probunet.engines.init_distributed` does).
    """
    import torch.distributed as dist

    value: list[dict[str, float] | None] = [None]
    if dist.get_rank() == 0:
        precisions = ("fp32", "bf16") if _cpu_has_native_bf16() else ("fp32",)
        value[0] = {
            _channels_last_key(p, n): cpu_channels_last_speedup(p, n) for p in precisions for n in (True, False)
        }
        if _cpu_has_native_bf16():
            value[0]["bf16"] = cpu_bf16_speedup()
    dist.broadcast_object_list(value, src=0)
    _shared_speedups.clear()
    _shared_speedups.update(value[0])
    return dict(_shared_speedups)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Map ``"auto"`` to ``"bf16"`` where the device computes bf16 natively and fast (a CUDA device with bf16
    support; a CPU with AVX512-BF16/AMX where bf16 measured at least :data:`BF16_MIN_SPEEDUP` times faster than fp32,
    :func:`cpu_bf16_speedup`), else ``"fp32"``; check the other values."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if _cpu_has_native_bf16() and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"
    return "fp32"


def explain_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """The precision :func:`resolve_precision` picks and one line saying why, for the training log.

    Returns:
        ``(resolved, reason)``, e.g. ``("fp32", "precision auto -> fp32: this CPU (AMD EPYC 7B13) has no native
        bf16 (avx512_bf16/amx_bf16 missing), so bf16 would be emulated and slower")``.
    """
    resolved = resolve_precision(precision, device)
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(device)
            native = torch.cuda.is_bf16_supported()
            what = f"this GPU ({name}) {'supports' if native else 'does not support'} bf16"
        else:
            native, what = False, "CUDA is not available"
    elif device.type == "cpu":
        flags = cpu_bf16_flags()
        native = bool(flags)
        if native:
            what = f"this CPU ({cpu_model_name()}) computes bf16 natively ({'/'.join(flags)})"
            if precision == "auto":
                speedup = cpu_bf16_speedup()
                what += (
                    f" and bf16 measured {speedup:.2f}x the speed of fp32 here (a U-Net training pass at start-up; "
                    f"bf16 where >= {BF16_MIN_SPEEDUP}x)"
                )
        elif onednn_isa_cap():
            what = (
                f"ONEDNN_MAX_CPU_ISA={onednn_isa_cap()} keeps this CPU ({cpu_model_name()}) from its native bf16, "
                "so bf16 would be emulated and slower"
            )
        else:
            what = (
                f"this CPU ({cpu_model_name()}) has no native bf16 ({'/'.join(BF16_CPU_FLAGS)} missing), so bf16 "
                "would be emulated and slower"
            )
    else:
        native, what = False, f"auto picks bf16 only on a CPU with native bf16 or a CUDA GPU, not on {device.type}"
    if precision == "auto":
        return resolved, f"precision auto -> {resolved}: {what}"
    hint = ""
    if precision == "bf16" and not native:
        hint = " (expect it to be slower than fp32)"
    elif precision == "fp32" and native and device.type == "cuda":
        hint = " (auto would pick bf16)"
    return resolved, f"precision {resolved} as configured{hint}: {what}"


def autocast_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 on ``device`` for ``"bf16"``; a no-op context for ``"fp32"``.

    Weights stay float32 (fp32 master weights); only the forward computation runs in bf16.
    """
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_channels_last(channels_last: bool | str, key: str = "channels_last") -> bool | str:
    """``"auto"`` or the boolean of ``channels_last`` (:func:`~monai_probunet.bundle_utils.as_bool`), measuring
    nothing.

    Raises:
        ConfigValueError: neither a boolean nor ``"auto"``, naming ``key``.
    """
    if isinstance(channels_last, str) and channels_last.strip().lower() == "auto":
        return "auto"
    try:
        return as_bool(channels_last, key)
    except ConfigValueError:
        raise ConfigValueError(
            f"--{key}: expected a boolean (true/false, 1/0 or yes/no) or auto, got {channels_last!r}."
        ) from None


def resolve_channels_last(
    channels_last: bool | str,
    device: torch.device | str,
    precision: str = "fp32",
    key: str = "channels_last",
    norm: bool = True,
) -> bool:
    """Whether to run 2-D networks in the channels-last memory format.

    ``"auto"`` is channels-last on a CUDA device (bf16 training of ``paper.yaml``'s network measured 1.2-1.9x faster
    there), and on a CPU where it measured at least :data:`CHANNELS_LAST_MIN_SPEEDUP` times faster than
    channels-first at ``precision`` (resolved by :func:`resolve_precision`) for a network with (``norm``) or without
    normalisation layers (:func:`cpu_channels_last_speedup`), else channels-first; ``benchmarks/train_speed.py``
    measures both. Other values are booleans.

    Raises:
        ConfigValueError: neither a boolean nor ``"auto"``, naming ``key``.
    """
    return explain_channels_last(channels_last, device, precision, key, norm)[0]


def explain_channels_last(
    channels_last: bool | str,
    device: torch.device | str,
    precision: str = "fp32",
    key: str = "channels_last",
    norm: bool = True,
) -> tuple[bool, str]:
    """The memory format :func:`resolve_channels_last` picks and one line saying why, for the training log.

    Returns:
        ``(channels_last, reason)``, e.g. ``(False, "memory format channels-first (channels_last auto on cpu:
        channels-last measured 0.91x the speed of channels-first here in fp32, a U-Net training pass with instance
        norm at start-up; channels-last where >= 1.1x)")``.
    """

    def layout(chosen: bool) -> str:
        return f"memory format {'channels-last' if chosen else 'channels-first'}"

    value = check_channels_last(channels_last, key)
    if value != "auto":
        return bool(value), layout(bool(value))
    device = torch.device(device)
    if device.type != "cpu":
        chosen = device.type == "cuda"
        return chosen, f"{layout(chosen)} (channels_last auto on {device.type})"
    resolved = resolve_precision(precision, device)
    speedup = cpu_channels_last_speedup(resolved, norm)
    chosen = speedup >= CHANNELS_LAST_MIN_SPEEDUP
    reason = layout(chosen)
    return chosen, (
        f"{reason} (channels_last auto on cpu: channels-last measured {speedup:.2f}x the speed of channels-first here "
        f"in {resolved}, a U-Net training pass {'with instance norm' if norm else 'without normalisation'} at "
        f"start-up; channels-last where >= {CHANNELS_LAST_MIN_SPEEDUP}x)"
    )


#: ``torch.compile`` modes a training network can be compiled with
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_compile(value: bool | str, device: torch.device | str, key: str = "torch_compile") -> str | None:
    """The ``torch.compile`` mode of the training network, or ``None`` to run it eagerly.

    ``"auto"`` is ``"reduce-overhead"`` on a CUDA device (CUDA graphs: at the paper's batch of 32 the GPU otherwise
    waits on kernel launches; ``paper.yaml``'s bf16 training step measured 2.2x the speed of a plain fp32 port
    against 1.2-1.4x eager, after about 25 s of compiling) in a single process, and ``None`` elsewhere (on the CPU
    compiling took minutes and ran slower; several processes under ``torchrun`` were not measured compiled);
    ``benchmarks/train_speed.py`` measures both. ``True`` is ``"default"``, ``False`` ``None``, and a mode of
    :data:`COMPILE_MODES` itself.

    Raises:
        ConfigValueError: none of these, naming ``key``.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            several = distributed and torch.distributed.get_world_size() > 1
            return "reduce-overhead" if torch.device(device).type == "cuda" and not several else None
        if text in COMPILE_MODES:
            return text
    try:
        return "default" if as_bool(value, key) else None
    except ConfigValueError:
        raise ConfigValueError(
            f"--{key}: expected a boolean (true/false, 1/0 or yes/no), auto or a torch.compile mode "
            f"({', '.join(COMPILE_MODES)}), got {value!r}."
        ) from None
