"""Process-group helpers for multi-process (``torchrun``) training with the bundle."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from ignite import distributed as idist

from .precision import share_cpu_speedups

__all__ = ["destroy_distributed", "init_distributed", "is_not_rank0", "local_device", "rank_zero_first"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_not_rank0() -> bool:
    """True in a process group on every rank but 0 (rank-0-only handlers use it as ``_disabled_``)."""
    return _initialized() and dist.get_rank() > 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (``LOCAL_RANK`` is set by ``torchrun``), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None) -> None:
    """Join the ``torchrun`` process group (``env://`` rendezvous); ``nccl`` with CUDA, else ``gloo``.

    Also makes ``cuda:LOCAL_RANK`` the current CUDA device, syncs ``ignite.distributed`` with the group (see
    below) and, on CPUs with native bf16, gives every rank rank 0's bf16 timing (``precision: auto`` agrees across
    ranks). A no-op if the group is already initialized.
    """
    if _initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_device())
    dist.init_process_group(backend=backend)
    # ignite's DiskSaver (in every CheckpointSaver) asks ignite.distributed for the rank, which on first use
    # detects the process group with collective calls (new_group + all_reduce): done here on all ranks at once,
    # or a CheckpointSaver built on rank 0 only would wait forever for the other ranks.
    idist.sync()
    if not torch.cuda.is_available():
        share_cpu_speedups()  # `precision: auto` and `channels_last: auto` from rank 0's timings on every rank
    logger.info(f"process group: backend {backend}, rank {dist.get_rank()} of {dist.get_world_size()}")


def destroy_distributed() -> None:
    """Leave the process group (after a final barrier so no rank exits while another still communicates)."""
    if _initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_zero_first(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on rank 0 first, then on the other ranks: e.g. generate a cached dataset once
    instead of every rank writing the same files at the same time. Just calls ``fn`` outside a process group."""
    if not _initialized():
        return fn(*args, **kwargs)
    if dist.get_rank() == 0:
        result = fn(*args, **kwargs)
        dist.barrier()
        return result
    dist.barrier()
    return fn(*args, **kwargs)
