"""Names of the segments a radiologist sees for a set of hypotheses (the MONAI Label app's segment list and the
CLI's DICOM SEG use the same names).

One segment for the presence-rule label (:mod:`monai_probunet.presence_label`): ``lesion p=0.62 ambiguous`` /
``lesion p=0.94`` / ``no lesion p=0.06`` (``p`` the presence probability, ``ambiguous`` the presence-ambiguity
flag). With all hypotheses: ``h3 variant B 4/16`` (hypothesis 3 belongs to variant B, the second most frequent
outline, drawn by 4 of 16 hypotheses; ``no lesion`` appended for an empty hypothesis).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["hypothesis_segment_names", "label_segment_name", "variant_letter"]


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
