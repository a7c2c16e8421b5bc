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
    "COMPILE_MODES",
    "PRECISIONS",
    "autocast_context",
    "cpu_bf16_flags",
    "cpu_bf16_speedup",
    "cpu_model_name",
    "explain_precision",
    "native_bf16_text",
    "onednn_isa_cap",
    "resolve_channels_last",
    "resolve_compile",
    "resolve_precision",
    "share_cpu_bf16_speedup",
]

PRECISIONS = ("auto", "fp32", "bf16")

#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AVX512-BF16 dot products, AMX tiles
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")

#: ``auto`` picks bf16 on a CPU with native bf16 only where it measured at least this much faster than fp32
#: (:func:`cpu_bf16_speedup`): with AVX512-BF16 but no AMX bf16 can be slower (0.64x measured, docs/benchmarks.md)
BF16_MIN_SPEEDUP = 1.1


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
def _bf16_speedup(threads: int) -> float:
    from ..networks.unet_core import UNetCore  # engines import networks, never the reverse

    times: dict[bool, list[float]] = {False: [], True: []}
    # a training pass wherever the first call comes from (an evaluation's no_grad or inference_mode); the caller's
    # random stream stays as it was
    with torch.inference_mode(False), torch.enable_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = UNetCore(2, 1, (16, 32, 64), 3)
        x = torch.rand(4, 1, 64, 64)
        for rep in range(7):  # 2 warm-up passes each, then 5 timed, fp32 and bf16 alternating
            for bf16 in (False, True):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = net(x)
                out.float().square().mean().backward()
                if rep >= 2:
                    times[bf16].append(time.perf_counter() - t0)
    return min(times[False]) / min(times[True])


#: rank 0's measurement in a distributed run (:func:`share_cpu_bf16_speedup`), used by every rank instead of its own
_shared_speedup: float | None = None


def cpu_bf16_speedup() -> float:
    """How much faster bf16 autocast trains than fp32 on this CPU (``fp32 time / bf16 time``), measured once per
    process and thread count: the forward and backward pass of a small U-Net of this package's blocks (16-32-64
    channels, 4 images of 64x64, about 0.5 s on 2 cores), fp32 and bf16 alternating, the fastest of 5 each.

    Native bf16 is not always faster: oneDNN's AVX512-BF16 kernels (without AMX) measured slower than fp32 on an
    Intel Xeon, faster on an AMD EPYC; AMX about 2x faster. The caller's random number stream is left untouched.
    """
    if _shared_speedup is not None:
        return _shared_speedup
    return _bf16_speedup(torch.get_num_threads())


def share_cpu_bf16_speedup() -> float:
    """Rank 0's :func:`cpu_bf16_speedup` for every rank of the process group, so that ``precision: auto`` picks the
    same precision on all of them (each rank timing on its own could differ, the ranks sharing the cores). A
    collective: every rank calls it at the same point (:func:`~monai_probunet.engines.init_distributed` does).
    """
    global _shared_speedup
    import torch.distributed as dist

    value = [cpu_bf16_speedup() if dist.get_rank() == 0 else 0.0]
    dist.broadcast_object_list(value, src=0)
    _shared_speedup = float(value[0])
    return _shared_speedup


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


def resolve_channels_last(channels_last: bool | str, device: torch.device | str, key: str = "channels_last") -> bool:
    """Whether to run 2-D networks in the channels-last memory format.

    ``"auto"`` is channels-last on a CUDA device (bf16 training of ``paper.yaml``'s network measured 1.2-1.9x faster
    there) and channels-first elsewhere (slower on the CPU); ``benchmarks/train_speed.py`` measures both. Other values
    are booleans (:func:`~monai_probunet.bundle_utils.as_bool`).

    Raises:
        ConfigValueError: neither a boolean nor ``"auto"``, naming ``key``.
    """
    if isinstance(channels_last, str) and channels_last.strip().lower() == "auto":
        return torch.device(device).type == "cuda"
    try:
        return as_bool(channels_last, key)
    except ConfigValueError:
        raise ConfigValueError(
            f"--{key}: expected a boolean (true/false, 1/0 or yes/no) or auto, got {channels_last!r}."
        ) from None


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
