"""Mixed-precision policy shared by the trainer and the sampling inferer."""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

__all__ = ["resolve_precision", "autocast_context", "PRECISIONS"]

PRECISIONS = ("auto", "fp32", "bf16")


@lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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


def autocast_context(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to bf16 on ``device`` for ``"bf16"``; a no-op context for ``"fp32"``.

    Weights stay float32 (fp32 master weights); only the forward computation runs in bf16.
    """
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
