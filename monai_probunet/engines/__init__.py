from .checkpoint import LastCheckpoint
from .distributed import destroy_distributed, init_distributed, is_not_rank0, local_device, rank_zero_first
from .ged_handler import GeneralizedEnergyDistance
from .inferer import SamplingInferer
from .kl_warmup import KLWarmup
from .precision import PRECISIONS, autocast_context, resolve_precision
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
    "autocast_context",
    "configure_mlflow",
    "destroy_distributed",
    "flatten_params",
    "init_distributed",
    "is_not_rank0",
    "iteration_terms",
    "local_device",
    "loss_terms",
    "rank_zero_first",
    "resolve_precision",
]
