from .ged_handler import GeneralizedEnergyDistance
from .inferer import SamplingInferer
from .precision import PRECISIONS, autocast_context, resolve_precision
from .trainer import ProbUNetTrainer, loss_terms

__all__ = [
    "GeneralizedEnergyDistance",
    "PRECISIONS",
    "ProbUNetTrainer",
    "SamplingInferer",
    "autocast_context",
    "loss_terms",
    "resolve_precision",
]

