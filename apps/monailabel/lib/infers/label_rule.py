"""The label the app returns and the names of its segments (numpy only: no MONAI Label import, unit-testable).
The presence rule and the consensus live in :mod:`monai_probunet.presence_label` (re-exported here).

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
from typing import Any

from monai_probunet.presence_label import (  # noqa: F401 -- the rule lives in the library (3-D mode uses it too)
    CONSENSUS_RULE,
    FALLBACK_LOW_P,
    LabelDecision,
    consensus_label,
    presence_decision,
)

__all__ = [
    "FALLBACK_LOW_P",
    "LabelDecision",
    "consensus_label",
    "hypothesis_segment_names",
    "label_segment_name",
    "presence_decision",
    "variant_letter",
]


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

    Args:
        variants: Objects with ``members`` (hypothesis indices) and ``has_lesion``, most frequent first.
        num_samples: S.

    Returns:
        list of str: ``S`` names, hypothesis order.
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
