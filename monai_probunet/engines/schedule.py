"""Epoch schedules derived from the run length: learning-rate milestones and the validation interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["lr_milestones", "validation_interval"]


def lr_milestones(max_epochs: int, fractions: Sequence[float]) -> list[int]:
    """Epoch milestones of a ``MultiStepLR`` at the given fractions of the run, each inside ``[1, max_epochs - 1]``.

    A milestone ``m`` lowers the learning rate after ``m`` completed epochs (the scheduler steps once per epoch), so
    a milestone at 0 would start the run at the decayed rate and one at or after ``max_epochs`` would never act.
    Each milestone is ``floor(max_epochs * fraction)`` clamped to ``[1, max_epochs - 1]``; fractions that land on
    the same epoch give one milestone (one decay step). A run of one epoch has no milestone.

    Args:
        max_epochs: number of training epochs (>= 1).
        fractions: increasing fractions of the run in ``(0, 1)``, e.g. ``(0.6, 0.85)``.

    Returns:
        strictly increasing epoch indices, e.g. ``[24, 34]`` for 40 epochs, ``[1]`` for 2 epochs, ``[]`` for 1.
    """
    if isinstance(max_epochs, bool) or int(max_epochs) != max_epochs or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")
    max_epochs = int(max_epochs)
    fractions = [float(f) for f in fractions]
    if any(not 0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"lr milestone fractions must lie in (0, 1), got {fractions}.")
    if any(b < a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(f"lr milestone fractions must be increasing, got {fractions}.")
    milestones = sorted({min(max(math.floor(max_epochs * f), 1), max_epochs - 1) for f in fractions})
    return [m for m in milestones if 1 <= m <= max_epochs - 1]


def validation_interval(max_epochs: int, validations: int = 8) -> int:
    """Epochs between validations so that a run validates about ``validations`` times, the first time early.

    ``max(1, max_epochs // validations)``: with the default 8 the first validation comes after at most an eighth
    of the run (or after the first epoch when the run is shorter than 8 epochs).

    Args:
        max_epochs: number of training epochs (>= 1).
        validations: the number of validations aimed at (>= 1).
    """
    if isinstance(max_epochs, bool) or int(max_epochs) != max_epochs or max_epochs < 1:
        raise ValueError(f"max_epochs must be a positive integer, got {max_epochs!r}.")
    if validations < 1:
        raise ValueError(f"validations must be >= 1, got {validations}.")
    return max(1, int(max_epochs) // int(validations))
