"""Reference rows: single answers repeated S times, what any sampling model must beat, scored with the same GED.

A prediction repeated S times has ``E[d(S, S')] = 0``, so its squared GED is the same at every S:
``2 E[d(P, Y)] - E[d(Y, Y')]``. The rows, per image:

- binary masks (``classes == (1,)``): ``majority_vote>=k``, the pixel-wise vote of the A graders (a pixel is
  foreground where at least k drew it), for k = ceil(A / 2) and floor(A / 2) + 1 (4 graders: 2 and 3); the best
  single answer a deterministic model could give;
- several classes: ``pixelwise_vote``, each pixel's most frequent grader label (a tie: the smallest label), and
  where the true distribution is known, ``most_probable_mode``;
- ``empty``: predicting nothing (every pixel a label outside ``classes``).

Where the modes and their probabilities are known each row is also scored against them (Eq. 7).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .ged import generalized_energy_distance
from .known_mixture import known_mixture_ged, mask_ignored

__all__ = [
    "REFERENCE_LABELS", "best_single_answer", "majority_votes", "mean_reference_geds", "pixelwise_vote",
    "reference_geds", "reference_label", "single_answers",
]  # fmt: skip

#: a reference row's key -> its name in tables and logs (``{k}`` and ``{a}``: the vote's threshold and grader count)
REFERENCE_LABELS = {
    "majority_vote": "graders' majority vote (>= {k} of {a})",
    "pixelwise_vote": "graders' pixel-wise majority vote",
    "most_probable_mode": "the most probable mode",
    "empty": "predicting nothing",
}


def reference_label(key: str, num_graders: int) -> str:
    """The name of the row ``key`` (e.g. ``majority_vote>=3`` of 4 graders: "graders' majority vote (>= 3 of 4)")."""
    base, _, k = key.partition(">=")
    return REFERENCE_LABELS[base].format(k=k, a=num_graders)


def best_single_answer(geds: dict[str, float]) -> str:
    """The key of the lowest of the rows' ``{key: GED}`` other than predicting nothing: the bar a model must go
    below."""
    return min((k for k in geds if k != "empty"), key=lambda k: geds[k])


def majority_votes(num_graders: int) -> list[int]:
    """The vote thresholds k of the binary rows: ceil(A / 2) and floor(A / 2) + 1 (one value for odd A)."""
    return sorted({(num_graders + 1) // 2, num_graders // 2 + 1})


def pixelwise_vote(maps: torch.Tensor) -> torch.Tensor:
    """``*spatial``: each pixel's most frequent label over the ``A x *spatial`` integer ``maps`` (a tie: the
    smallest label)."""
    labels = torch.unique(maps)
    counts = torch.stack([(maps == v).sum(0) for v in labels])
    return labels[counts.argmax(0)]


def single_answers(
    graders: torch.Tensor,
    classes: Sequence[int] = (1,),
    modes: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The reference rows' predictions for one image.

    Args:
        graders: ``A x *spatial`` integer label maps of the graders.
        classes: the classes the GED scores; ``(1,)``: binary masks.
        modes: optional ``M x *spatial`` modes of the true distribution; ``probs`` their ``M`` probabilities.

    Returns:
        ``{key: *spatial}`` label maps (keys ``majority_vote>=k``, ``pixelwise_vote``, ``most_probable_mode``,
        ``empty``).
    """
    graders = graders.long()
    if tuple(classes) == (1,):
        drawn = (graders == 1).sum(0)
        out = {f"majority_vote>={k}": (drawn >= k).long() for k in majority_votes(graders.shape[0])}
    else:
        out = {"pixelwise_vote": pixelwise_vote(graders)}
        if modes is not None and probs is not None:
            out["most_probable_mode"] = modes[int(torch.as_tensor(probs).argmax())].long()
    outside = min(set(range(len(classes) + 1)) - {int(c) for c in classes})  # a label the GED does not score
    out["empty"] = torch.full_like(graders[0], outside)
    return out


def reference_geds(
    graders: torch.Tensor,
    classes: Sequence[int] = (1,),
    ignore_index: int | None = None,
    modes: torch.Tensor | None = None,
    probs: torch.Tensor | None = None,
) -> dict[str, tuple[float, float | None]]:
    """Squared GED of each reference row for one image, against the graders (Eq. 6) and the known modes (Eq. 7).

    Args:
        graders: ``A x *spatial`` integer label maps.
        classes: the classes whose IoU the GED averages.
        ignore_index: the graders' label of unannotated pixels: a prediction there counts for no class (as the
            evaluation masks a model's samples); ``None``: no masking.
        modes, probs: optional ``M x *spatial`` modes and their ``M`` probabilities (Eq. 7).

    Returns:
        ``{key: (GED, Eq. 7 GED or None)}``; the same at every S.
    """
    targets = graders.long()[None]
    out = {}
    for key, answer in single_answers(graders, classes, modes, probs).items():
        s = answer[None, None]
        masked = s if ignore_index is None else mask_ignored(s, targets, ignore_index)
        ged = float(generalized_energy_distance(masked, targets, classes=classes).ged[0])
        eq7 = None
        if modes is not None and probs is not None:
            weights = torch.as_tensor(probs)[None]
            eq7 = float(known_mixture_ged(s, modes.long()[None], weights, classes, ignore_index).ged[0])
        out[key] = (ged, eq7)
    return out


def mean_reference_geds(
    images: Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]],
    classes: Sequence[int] = (1,),
    ignore_index: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The reference rows of a split: :func:`reference_geds` averaged over its images.

    Args:
        images: per image ``(graders, modes, probs)`` (``modes`` and ``probs`` ``None`` where unknown).
        classes, ignore_index: see :func:`reference_geds`.

    Returns:
        ``{key: {"label": name, "ged": mean squared GED, "ged_eq7": mean Eq. 7 GED over the images whose modes are
        known (``None`` where none are)}}``.
    """
    sums: dict[str, list[float]] = {}
    eq7: dict[str, list[float]] = {}
    num_graders = 0
    for graders, modes, probs in images:
        num_graders = graders.shape[0]
        for key, (ged, ged7) in reference_geds(graders, classes, ignore_index, modes, probs).items():
            sums.setdefault(key, []).append(ged)
            if ged7 is not None:
                eq7.setdefault(key, []).append(ged7)
    return {key: {"label": reference_label(key, num_graders), "ged": sum(v) / len(v),
                  "ged_eq7": sum(eq7[key]) / len(eq7[key]) if key in eq7 else None}
            for key, v in sums.items()}  # fmt: skip
