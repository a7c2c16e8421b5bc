"""The label the app returns and the names of its segments (numpy only: no MONAI Label import, unit-testable).

Presence rule
-------------
The returned label is empty only when the lesion-presence count (hypotheses of S with any lesion voxel) lies
**below** the ambiguous band of the presence rule: with a fitted :class:`~monai_probunet.metrics.PresenceThreshold`
(ambiguous iff ``low < count < high``, counts rescaled to the S it was fitted on) the label is empty iff
``count <= low``; with the fallback rule (ambiguous iff ``0.25 <= p <= 0.75``) it is empty iff ``p < 0.25``.
Otherwise the label is the **consensus of the hypotheses that contain a lesion**: a voxel is lesion when more than
half of those hypotheses mark it; if no voxel has such a majority (the outlines do not overlap), the label is the
representative of the most frequent lesion-containing variant.

Segment names
-------------
One segment for the label: ``lesion p=0.62 ambiguous`` / ``lesion p=0.94`` / ``no lesion p=0.06`` (``p`` the
presence probability, ``ambiguous`` the presence-ambiguity flag). With all hypotheses: ``h3 variant B 4/16``
(hypothesis 3 belongs to variant B, the second most frequent outline, drawn by 4 of 16 hypotheses; ``no lesion``
appended for an empty hypothesis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FALLBACK_LOW_P",
    "LabelDecision",
    "consensus_label",
    "hypothesis_segment_names",
    "label_segment_name",
    "presence_decision",
    "variant_letter",
]

#: with the fallback rule the label is empty iff p < this (the lower end of the fallback ambiguous band)
FALLBACK_LOW_P = 0.25

CONSENSUS_RULE = (
    "consensus of the lesion-containing hypotheses: a voxel is lesion when more than half of the hypotheses that "
    "contain a lesion mark it; if no voxel has such a majority, the representative of the most frequent "
    "lesion-containing variant"
)


@dataclass(frozen=True)
class LabelDecision:
    """Whether the returned label shows a lesion, and the rule that decided it.

    Attributes
    ----------
    show_lesion : bool
        ``False``: the label is empty.
    rule : str
        The presence rule with its numbers, for the reply JSON.
    """

    show_lesion: bool
    rule: str


def presence_decision(count: int, num_samples: int, threshold: Any | None) -> LabelDecision:
    """Apply the presence rule to a lesion-presence count.

    Parameters
    ----------
    count : int
        Hypotheses (of ``num_samples``) with any lesion voxel.
    num_samples : int
        S.
    threshold : PresenceThreshold-like or None
        Object with ``low``, ``high``, ``num_samples`` (the fitted interval rule), or ``None`` for the fallback.

    Returns
    -------
    LabelDecision
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
    show = c > int(threshold.low)
    scaled = "" if s_fit == num_samples else f" (rescaled from {count} of {num_samples})"
    rule = (
        f"presence rule (fitted threshold, ambiguous iff {threshold.low} < count < {threshold.high} of {s_fit}): "
        f"the label is empty iff count <= {threshold.low}; count = {c} of {s_fit}{scaled}; otherwise the "
        f"{CONSENSUS_RULE}"
    )
    return LabelDecision(show, rule)


def consensus_label(labels: np.ndarray, fallback: int | None = None) -> np.ndarray:
    """Majority of the lesion-containing hypotheses.

    Parameters
    ----------
    labels : numpy.ndarray
        ``S x *spatial`` label maps (0 = background, > 0 = lesion).
    fallback : int, optional
        Index of the hypothesis returned when no voxel has a majority (the representative of the most frequent
        lesion-containing variant); default: the lesion-containing hypothesis with the most voxels in common with
        the others.

    Returns
    -------
    numpy.ndarray
        ``*spatial`` uint8 (0/1); all zeros if no hypothesis contains a lesion.
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


def label_segment_name(presence_probability: float, ambiguous: bool, show_lesion: bool) -> str:
    """``lesion p=0.62 ambiguous``, ``lesion p=0.94``, ``no lesion p=0.06``."""
    name = f"{'lesion' if show_lesion else 'no lesion'} p={presence_probability:.2f}"
    return f"{name} ambiguous" if ambiguous else name


def variant_letter(rank: int) -> str:
    """``0 -> A``, ``25 -> Z``, ``26 -> AA`` (spreadsheet column letters)."""
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}.")
    letters = ""
    r = rank + 1
    while r:
        r, m = divmod(r - 1, 26)
        letters = chr(ord("A") + m) + letters
    return letters


def hypothesis_segment_names(variants: Sequence[Any], num_samples: int) -> list[str]:
    """Name of each hypothesis: ``h{s} variant {letter} {count}/{S}`` (+ `` no lesion`` when empty).

    Parameters
    ----------
    variants : sequence of Variant-like
        Objects with ``members`` (hypothesis indices) and ``has_lesion``, most frequent first.
    num_samples : int
        S.

    Returns
    -------
    list of str
        ``S`` names, hypothesis order.
    """
    names: list[str | None] = [None] * num_samples
    for rank, v in enumerate(variants):
        for s in v.members:
            name = f"h{s} variant {variant_letter(rank)} {len(v.members)}/{num_samples}"
            names[s] = name if v.has_lesion else f"{name} no lesion"
    missing = [s for s, n in enumerate(names) if n is None]
    if missing:
        raise ValueError(f"hypotheses {missing} belong to no variant.")
    return names  # type: ignore[return-value]
