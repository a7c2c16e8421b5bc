from .distances import class_counts, pairwise_iou_distance
from .ged import GED_TERMS, GEDTerms, GeneralizedEnergyDistanceMetric, generalized_energy_distance

__all__ = [
    "GED_TERMS",
    "GEDTerms",
    "GeneralizedEnergyDistanceMetric",
    "class_counts",
    "generalized_energy_distance",
    "pairwise_iou_distance",
]
from .oracle import sample_modes  # noqa: E402

__all__ += ["sample_modes"]
