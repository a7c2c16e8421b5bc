"""Training and evaluation engines, the sampling inferer and their run settings (precision, devices, schedule).

The event handlers (KL warm-up, GED metric, checkpoints, progress, MLflow) live in :mod:`monai_probunet.handlers`.
"""

from .distributed import destroy_distributed, init_distributed, is_not_rank0, local_device, rank_zero_first
from .inferer import SamplingInferer
from .precision import (
    COMPILE_MODES,
    PRECISIONS,
    autocast_context,
    check_channels_last,
    explain_channels_last,
    explain_precision,
    resolve_channels_last,
    resolve_compile,
    resolve_precision,
)
from .schedule import lr_milestones, validation_interval
from .trainer import ProbUNetTrainer, loss_terms

__all__ = [
    "COMPILE_MODES",
    "PRECISIONS",
    "ProbUNetTrainer",
    "SamplingInferer",
    "autocast_context",
    "check_channels_last",
    "destroy_distributed",
    "explain_channels_last",
    "explain_precision",
    "init_distributed",
    "is_not_rank0",
    "local_device",
    "loss_terms",
    "lr_milestones",
    "rank_zero_first",
    "resolve_channels_last",
    "resolve_compile",
    "resolve_precision",
    "validation_interval",
]
