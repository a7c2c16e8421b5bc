"""MONAI transforms specific to multi-grader data."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandGraderd"]


class RandGraderd(Randomizable, MapTransform):
    """Keep one grader's mask, drawn uniformly at random, per image and call.

    This implements the paper's "image-grader pairs are drawn randomly": the label holds all A grader masks
    in its channel dimension and a fresh grader is drawn every time the image is visited.

    Args:
        keys: keys of the grader stacks (``A x *spatial``); the same grader index is used for all keys.
        allow_missing_keys: don't raise if a key is missing.

    Shapes:
        ``A x *spatial`` -> ``1 x *spatial``.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self._index = 0

    def randomize(self, num_graders: int) -> None:  # type: ignore[override]
        self._index = int(self.R.randint(num_graders))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = True
        for key in self.key_iterator(d):
            stack = d[key]
            if stack.ndim < 2 or stack.shape[0] < 1:
                raise ValueError(f"RandGraderd: {key!r} must be A x *spatial with A >= 1, got shape {tuple(stack.shape)}.")
            if first:
                self.randomize(stack.shape[0])
                first = False
            d[key] = stack[self._index : self._index + 1]
        return d
