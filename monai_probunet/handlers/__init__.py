"""Ignite event handlers of the Probabilistic U-Net workflows (the counterpart of :mod:`monai.handlers`)."""

from .checkpoint import LastCheckpoint
from .evaluation_tracking import log_evaluation
from .ged_handler import GeneralizedEnergyDistance
from .kl_warmup import KLWarmup
from .model_files import AtomicCheckpointSaver, FinalModel
from .progress import TrainingProgress
from .reference_ged import ReferenceGED
from .tracking import MLflowSampleGrid, configure_mlflow, flatten_params, iteration_terms

__all__ = [
    "AtomicCheckpointSaver",
    "FinalModel",
    "GeneralizedEnergyDistance",
    "KLWarmup",
    "LastCheckpoint",
    "MLflowSampleGrid",
    "ReferenceGED",
    "TrainingProgress",
    "configure_mlflow",
    "flatten_params",
    "iteration_terms",
    "log_evaluation",
]
