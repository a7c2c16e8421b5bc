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
from .matched_iou import hungarian_matched_iou, sample_diversity  # noqa: E402
from .presence import (  # noqa: E402
    PresenceThreshold,
    fit_presence_threshold,
    lesion_presence_counts,
    presence_ambiguity,
    presence_probability,
)
from .statistics import bootstrap_ci, wilcoxon_signed_rank  # noqa: E402

__all__ += [
    "PresenceThreshold",
    "bootstrap_ci",
    "fit_presence_threshold",
    "hungarian_matched_iou",
    "lesion_presence_counts",
    "presence_ambiguity",
    "presence_probability",
    "sample_diversity",
    "wilcoxon_signed_rank",
]
