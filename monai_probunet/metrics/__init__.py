from .distances import class_counts, iou_distance_from_counts, joint_iou_distance, pairwise_iou_distance
from .ged import GED_TERMS, GEDTerms, GeneralizedEnergyDistanceMetric, generalized_energy_distance
from .matched_iou import hungarian_matched_iou, sample_diversity
from .oracle import sample_modes
from .presence import (
    PresenceThreshold,
    fit_presence_threshold,
    lesion_presence_counts,
    presence_ambiguity,
    presence_probability,
)
from .statistics import bootstrap_ci, wilcoxon_signed_rank

__all__ = [
    "GED_TERMS",
    "GEDTerms",
    "GeneralizedEnergyDistanceMetric",
    "PresenceThreshold",
    "bootstrap_ci",
    "class_counts",
    "fit_presence_threshold",
    "generalized_energy_distance",
    "hungarian_matched_iou",
    "iou_distance_from_counts",
    "joint_iou_distance",
    "lesion_presence_counts",
    "pairwise_iou_distance",
    "presence_ambiguity",
    "presence_probability",
    "sample_diversity",
    "sample_modes",
    "wilcoxon_signed_rank",
]
