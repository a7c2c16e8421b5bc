"""MONAI transforms specific to multi-grader data."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

__all__ = ["RandFieldOfViewd", "RandGraderd"]


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


class RandFieldOfViewd(Randomizable, MapTransform):
    """Let the scan's field of view end inside the crop: bands along the crop's borders become "outside the image".

    A scan's reconstructed field of view can end inside the model's field: beyond it the scanner writes its padding
    value (air after the window), and the hypotheses there are meaningless. Training crops of whole chest slices
    never show such a border, so without this transform a model meets straight-edged air regions first at
    inference. (Beyond the image array itself the inference path repeats the border pixels instead,
    :class:`~monai_probunet.inference_transforms.ModelGridd`, and leaves that part out of the hypotheses.)

    With probability ``prob`` per image, each of the ``2 * spatial_dims`` borders independently (probability
    ``side_prob``) gets a band of uniform random width in ``[1, max_fraction * size]`` pixels set to ``image_fill``
    in the image keys and 0 in the label keys (nothing is drawn outside the image). ``max_fraction < 0.5`` keeps
    the crop centre, where the user clicked, inside.

    Args:
        keys: image keys (filled with ``image_fill``).
        label_keys: label keys (grader stacks, filled with 0 in the same bands).
        prob: probability of cutting the field of view of an image.
        side_prob: probability of each border getting a band, given that the image is cut.
        max_fraction: largest band width as a fraction of the crop size along its axis (< 0.5).
        image_fill: value of the outside in the image (0: the HU window's lower bound).
        allow_missing_keys: don't raise if a key is missing.

    Shapes:
        ``C x *spatial`` -> ``C x *spatial`` for every key (all keys share the spatial shape).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection = (),
        prob: float = 0.3,
        side_prob: float = 0.5,
        max_fraction: float = 0.45,
        image_fill: float = 0.0,
        allow_missing_keys: bool = False,
    ) -> None:
        label_keys = [label_keys] if isinstance(label_keys, str) else list(label_keys)
        image_keys = [keys] if isinstance(keys, str) else list(keys)
        MapTransform.__init__(self, image_keys + label_keys, allow_missing_keys)
        if not 0.0 < max_fraction < 0.5:
            raise ValueError(f"RandFieldOfViewd: max_fraction must be in (0, 0.5), got {max_fraction}.")
        self.image_keys, self.label_keys = image_keys, label_keys
        self.prob, self.side_prob, self.max_fraction, self.image_fill = prob, side_prob, max_fraction, image_fill
        self._bands: list[tuple[int, int, int]] = []  # (axis, side 0 low / 1 high, width)

    def randomize(self, spatial_shape: tuple[int, ...]) -> None:  # type: ignore[override]
        self._bands = []
        if self.R.rand() >= self.prob:
            return
        for axis, size in enumerate(spatial_shape):
            for side in (0, 1):
                if self.R.rand() < self.side_prob:
                    self._bands.append((axis, side, int(self.R.randint(1, max(2, int(self.max_fraction * size) + 1)))))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        self.randomize(tuple(d[keys[0]].shape[1:]))
        if not self._bands:
            return d
        for key in keys:
            out = d[key].clone() if hasattr(d[key], "clone") else np.array(d[key], copy=True)
            fill = self.image_fill if key in self.image_keys else 0
            for axis, side, width in self._bands:
                index = [slice(None)] * out.ndim
                index[1 + axis] = slice(0, width) if side == 0 else slice(out.shape[1 + axis] - width, None)
                out[tuple(index)] = fill
            d[key] = out
        return d
