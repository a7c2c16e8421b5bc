"""The presence-rule label: one label map from S hypotheses that is empty only when the presence rule says so
(numpy only).

Presence rule: the label is empty only when the lesion-presence count (hypotheses of S with any lesion voxel) lies
**below** the ambiguous band of the presence rule: with a fitted :class:`~monai_probunet.metrics.PresenceThreshold`
(ambiguous iff ``low < count < high``, counts rescaled to the S it was fitted on) the label is empty iff ``count <=
low``; with the fallback rule (ambiguous iff ``0.25 <= p <= 0.75``) it is empty iff ``p < 0.25``. Either way a label is
never drawn from fewer than a quarter of the hypotheses (``p < 0.25`` is empty, :data:`MIN_SHOWN_P`): a rule fitted on
lesion crops alone, as the paper's validation split holds, has ``low = 0`` because it never saw an image without a
lesion, and would otherwise outline what one hypothesis of 16 draws on a lesion-free vessel. Otherwise the label is
the **consensus of the hypotheses that contain a lesion**: a voxel is lesion when more than half of those hypotheses
mark it; if no voxel has such a majority (the outlines do not overlap), the label is the representative of the most
frequent lesion-containing variant. Works for any number of spatial dimensions (a slice or a volume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CONSENSUS_RULE",
    "FALLBACK_LOW_P",
    "MIN_SHOWN_P",
    "LabelDecision",
    "consensus_label",
    "presence_decision",
]

#: with the fallback rule the label is empty iff p < this (the lower end of the fallback ambiguous band)
FALLBACK_LOW_P = 0.25

#: with any rule the label is empty iff p < this: a label shows a lesion only where at least a quarter of the
#: hypotheses do (4 of 16; held-out real CT without a lesion shows one in at most 3 of 16, README)
MIN_SHOWN_P = FALLBACK_LOW_P

CONSENSUS_RULE = (
    "consensus of the lesion-containing hypotheses: a voxel is lesion when more than half of the hypotheses that "
    "contain a lesion mark it; if no voxel has such a majority, the representative of the most frequent "
    "lesion-containing variant"
)


@dataclass(frozen=True)
class LabelDecision:
    """Whether the returned label shows a lesion, and the rule that decided it.

    Attributes:
        show_lesion: ``False``: the label is empty.
        rule: The presence rule with its numbers, for the reply JSON.
    """

    show_lesion: bool
    rule: str


def presence_decision(count: int, num_samples: int, threshold: Any | None) -> LabelDecision:
    """Apply the presence rule to a lesion-presence count.

    Args:
        count: Hypotheses (of ``num_samples``) with any lesion voxel.
        num_samples: S.
        threshold: Object with ``low``, ``high``, ``num_samples`` (the fitted interval rule), or ``None`` for the
            fallback.

    Returns:
        LabelDecision: whether the label shows the lesion, and the rule.
    """
    if not 0 <= count <= num_samples or num_samples < 1:
        raise ValueError(f"count must lie in [0, num_samples={num_samples}], got {count}.")
    p = count / num_samples
    if threshold is None:
        show = p >= FALLBACK_LOW_P
        rule = (
            f"presence rule (fallback, no fitted threshold): the label is empty iff p < {FALLBACK_LOW_P} "
            f"(below the ambiguous band 0.25 <= p <= 0.75); p = {count}/{num_samples} = {p:.3f}; otherwise the "
            f"{CONSENSUS_RULE}"
        )
        return LabelDecision(show, rule)
    s_fit = int(threshold.num_samples)
    c = count if s_fit == num_samples else int(round(p * s_fit))
    show = c > int(threshold.low) and p >= MIN_SHOWN_P
    scaled = "" if s_fit == num_samples else f" (rescaled from {count} of {num_samples})"
    rule = (
        f"presence rule (fitted threshold, ambiguous iff {threshold.low} < count < {threshold.high} of {s_fit}): "
        f"the label is empty iff count <= {threshold.low} or p < {MIN_SHOWN_P} (a label is never drawn from fewer "
        f"than a quarter of the hypotheses); count = {c} of {s_fit}{scaled}, p = {count}/{num_samples} = {p:.3f}; "
        f"otherwise the {CONSENSUS_RULE}"
    )
    return LabelDecision(show, rule)


def consensus_label(labels: np.ndarray, fallback: int | None = None) -> np.ndarray:
    """Majority of the lesion-containing hypotheses.

    Args:
        labels: ``S x *spatial`` label maps (0 = background, > 0 = lesion).
        fallback: Index of the hypothesis returned when no voxel has a majority (the representative of the most frequent
            lesion-containing variant); default: the lesion-containing hypothesis with the most voxels in common with
            the others.

    Returns:
        numpy.ndarray: ``*spatial`` uint8 (0/1); all zeros if no hypothesis contains a lesion.
    """
    fg = np.asarray(labels) > 0
    flat = fg.reshape(fg.shape[0], -1)
    has = flat.any(axis=1)
    n = int(has.sum())
    if n == 0:
        return np.zeros(fg.shape[1:], np.uint8)
    votes = flat[has].sum(axis=0, dtype=np.int64)
    out = (2 * votes > n).reshape(fg.shape[1:])
    if out.any():
        return out.astype(np.uint8)
    if fallback is None or not has[fallback]:
        members = np.flatnonzero(has)
        overlap = flat[members].astype(np.int64) @ votes  # voxels shared with the other lesion hypotheses
        fallback = int(members[int(np.argmax(overlap))])
    return fg[fallback].astype(np.uint8)
