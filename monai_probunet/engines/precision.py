"""Mixed-precision policy shared by the trainer and the sampling inferer."""

from __future__ import annotations

import contextlib
import os
import platform
from functools import lru_cache

import torch

__all__ = [
    "BF16_CPU_FLAGS",
    "PRECISIONS",
    "autocast_context",
    "cpu_bf16_flags",
    "cpu_model_name",
    "explain_precision",
    "native_bf16_text",
    "onednn_isa_cap",
    "resolve_precision",
]

PRECISIONS = ("auto", "fp32", "bf16")

#: CPU flags (``/proc/cpuinfo``) of native bf16 arithmetic: AVX512-BF16 dot products, AMX tiles
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


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


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """Map ``"auto"`` to ``"bf16"`` where the device computes bf16 natively (CPU with AVX512-BF16/AMX, or a CUDA
    device with bf16 support), else ``"fp32"``; check the other values."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if _cpu_has_native_bf16() else "fp32"
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
    elif precision == "fp32" and native:
        hint = " (auto would pick bf16)"
    return resolved, f"precision {resolved} as configured{hint}: {what}"


def autocast_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 on ``device`` for ``"bf16"``; a no-op context for ``"fp32"``.

    Weights stay float32 (fp32 master weights); only the forward computation runs in bf16.
    """
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
