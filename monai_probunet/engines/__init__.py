from .checkpoint import LastCheckpoint
from .distributed import destroy_distributed, init_distributed, is_not_rank0, local_device, rank_zero_first
from .ged_handler import GeneralizedEnergyDistance
from .inferer import SamplingInferer
from .kl_warmup import KLWarmup
from .precision import PRECISIONS, autocast_context, explain_precision, resolve_precision
from .progress import TrainingProgress
from .schedule import lr_milestones, validation_interval
from .tracking import MLflowSampleGrid, configure_mlflow, flatten_params, iteration_terms
from .trainer import ProbUNetTrainer, loss_terms

__all__ = [
    "GeneralizedEnergyDistance",
    "KLWarmup",
    "LastCheckpoint",
    "MLflowSampleGrid",
    "PRECISIONS",
    "ProbUNetTrainer",
    "SamplingInferer",
    "TrainingProgress",
    "autocast_context",
    "configure_mlflow",
    "destroy_distributed",
    "explain_precision",
    "flatten_params",
    "init_distributed",
    "is_not_rank0",
    "iteration_terms",
    "local_device",
    "loss_terms",
    "lr_milestones",
    "rank_zero_first",
    "resolve_precision",
    "validation_interval",
]
