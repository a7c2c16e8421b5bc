"""The class-flipping task of Kohl et al. 2018, Sec. 4.2: the classes, the flips and their 2**K modes.

Five Cityscapes classes flip to five new classes, one Bernoulli draw per image per class, with the paper's
probabilities (:data:`FLIPS`):

==============  ========  ======  ===========
class           train id  new id  probability
==============  ========  ======  ===========
sidewalk        1         19      8/17
person          11        20      7/17
car             13        21      6/17
vegetation      8         22      5/17
road            0         23      4/17
==============  ========  ======  ===========

So there are ``2**5 = 32`` flip patterns (:func:`enumerate_modes`), 24 classes in all (:data:`NUM_CLASSES`), an
ignore label (:data:`IGNORE_INDEX`), and the GED of the paper's Eq. 7 averages the IoU over the 10 switchable classes
(:data:`SWITCHABLE_CLASSES`).

This module is the task's definition only (numpy and torch, nothing else of the package): the dataset generator
(:mod:`monai_probunet.data.scenes32`), the Cityscapes converter and the metrics
(:mod:`monai_probunet.metrics.calibration`) all import it, so a metric never imports a dataset generator.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = [
    "CLASS_NAMES",
    "FLIPS",
    "FLIP_PROBS",
    "FLIP_SOURCE_CLASSES",
    "FLIP_TARGET_CLASSES",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "SWITCHABLE_CLASSES",
    "TRAIN_ID_NAMES",
    "Flip",
    "apply_flip_pattern",
    "check_flips",
    "distinct_modes",
    "enumerate_modes",
    "flip_task_metadata",
    "pattern_index",
    "unflip",
]

#: one flip: (source train id, new class id, flip probability, new class name)
Flip = tuple[int, int, float, str]

IGNORE_INDEX = 255

#: Cityscapes train ids 0..18 (cityscapesScripts ``labels.py``)
TRAIN_ID_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

#: (source train id, new class id, flip probability, new class name), in the paper's order (Sec. 4.2)
FLIPS: tuple[tuple[int, int, float, str], ...] = (
    (SIDEWALK, 19, 8 / 17, "sidewalk 2"),
    (PERSON, 20, 7 / 17, "person 2"),
    (CAR, 21, 6 / 17, "car 2"),
    (VEGETATION, 22, 5 / 17, "vegetation 2"),
    (ROAD, 23, 4 / 17, "road 2"),
)
FLIP_PROBS: tuple[float, ...] = tuple(f[2] for f in FLIPS)
FLIP_SOURCE_CLASSES: tuple[int, ...] = tuple(f[0] for f in FLIPS)
FLIP_TARGET_CLASSES: tuple[int, ...] = tuple(f[1] for f in FLIPS)
#: the 10 classes whose IoU the Cityscapes GED averages (paper Appendix B): the 5 flippable and the 5 new ones
SWITCHABLE_CLASSES: tuple[int, ...] = tuple(sorted(FLIP_SOURCE_CLASSES + FLIP_TARGET_CLASSES))
NUM_CLASSES = len(TRAIN_ID_NAMES) + len(FLIPS)  # 24
CLASS_NAMES: tuple[str, ...] = TRAIN_ID_NAMES + tuple(f[3] for f in FLIPS)

_Label = TypeVar("_Label", np.ndarray, torch.Tensor)


# --------------------------------------------------------------------------------------------- the 32 modes


def enumerate_modes(flip_probs: Sequence[float] = FLIP_PROBS) -> list[tuple[tuple[int, ...], float]]:
    """All ``2**K`` flip patterns of K independent class flips, with their probabilities.

    Pattern ``j`` (list position) has bits ``(b_1, ..., b_K)`` with ``b_1`` most significant, i.e. the order of
    ``itertools.product((0, 1), repeat=K)``: pattern 0 flips nothing, pattern ``2**K - 1`` flips every class. Its
    probability is ``prod_k p_k**b_k * (1 - p_k)**(1 - b_k)``; the probabilities sum to 1.

    Args:
        flip_probs: K flip probabilities in ``[0, 1]`` (default: the paper's 8/17, 7/17, 6/17, 5/17, 4/17).

    Returns:
        ``2**K`` pairs ``(pattern: K-tuple of 0/1, probability)``.
    """
    p = [float(v) for v in flip_probs]
    if not p or any(not 0.0 <= v <= 1.0 for v in p):
        raise ValueError(f"flip_probs must be a non-empty sequence of probabilities in [0, 1], got {list(flip_probs)}.")
    out = []
    for bits in itertools.product((0, 1), repeat=len(p)):
        out.append((bits, float(np.prod([pk if b else 1.0 - pk for b, pk in zip(bits, p)]))))
    return out


def pattern_index(pattern: Sequence[int]) -> int:
    """Position of a flip pattern in :func:`enumerate_modes` (first bit most significant)."""
    idx = 0
    for b in pattern:
        if b not in (0, 1, True, False):
            raise ValueError(f"a flip pattern holds 0/1 values, got {list(pattern)}.")
        idx = 2 * idx + int(b)
    return idx


def check_flips(flips: Sequence[tuple[int, int, float, str]]) -> None:
    """Raise ``ValueError`` unless ``flips`` is non-empty with distinct source and target classes."""
    if not flips:
        raise ValueError("flips must name at least one (source, target, probability, name) flip.")
    src, dst = [f[0] for f in flips], [f[1] for f in flips]
    if len(set(src) | set(dst)) != 2 * len(flips):
        raise ValueError(f"flip source and target classes must be distinct, got sources {src} and targets {dst}.")


def apply_flip_pattern(
    label: _Label, pattern: Sequence[int], flips: Sequence[tuple[int, int, float, str]] = FLIPS
) -> _Label:
    """Relabel the flipped classes of an *unflipped* label map.

    Args:
        label: ``*spatial`` (any shape) integer label map, numpy array or torch tensor, holding no target class.
        pattern: one 0/1 value per flip of ``flips``.
        flips: ``(source, target, probability, name)`` per flippable class (default :data:`FLIPS`).

    Returns:
        A new label map of the same type, shape and dtype: ``source`` replaced by ``target`` where the bit is 1.
    """
    if len(pattern) != len(flips):
        raise ValueError(f"pattern has {len(pattern)} bits for {len(flips)} flips.")
    out = label.clone() if isinstance(label, torch.Tensor) else np.array(label, copy=True)
    for (src, dst, _, _), bit in zip(flips, pattern):
        if bit:
            out[label == src] = dst
    return out


def unflip(label: _Label, flips: Sequence[tuple[int, int, float, str]] = FLIPS) -> _Label:
    """Map every new class back to its source class (the inverse of :func:`apply_flip_pattern`).

    Args:
        label: integer label map of any shape (numpy array or torch tensor).

    Returns:
        A new label map of the same type, shape and dtype holding no target class.
    """
    out = label.clone() if isinstance(label, torch.Tensor) else np.array(label, copy=True)
    for src, dst, _, _ in flips:
        out[label == dst] = src
    return out


def distinct_modes(
    label: np.ndarray, flips: Sequence[tuple[int, int, float, str]] = FLIPS
) -> tuple[list[np.ndarray], list[float], list[list[int]]]:
    """The distinct label maps of the flip distribution of one unflipped label map.

    A pattern that differs from another only in the bits of classes absent from ``label`` gives the same map: such
    patterns are merged into one mode whose probability is their sum (= the product over the *visible* classes).
    Modes are ordered by their smallest pattern index, so mode 0 is the unflipped map.

    Args:
        label: ``*spatial`` unflipped label map (train ids and ignore; no target class).
        flips: flippable classes (default :data:`FLIPS`).

    Returns:
        ``(modes: 2**v label maps, probabilities summing to 1, patterns: per mode the sorted indices of the
        :func:`enumerate_modes` patterns it stands for)``, v = number of source classes present in ``label``.
    """
    check_flips(flips)
    targets = [f[1] for f in flips]
    if np.isin(label, targets).any():
        raise ValueError(f"label must be unflipped (no class of {targets}); call unflip() first.")
    visible = [bool((label == f[0]).any()) for f in flips]
    groups: dict[tuple[int, ...], list[int]] = {}
    probs: dict[tuple[int, ...], float] = {}
    for j, (bits, p) in enumerate(enumerate_modes([f[2] for f in flips])):
        key = tuple(b if v else 0 for b, v in zip(bits, visible))
        groups.setdefault(key, []).append(j)
        probs[key] = probs.get(key, 0.0) + p
    modes, mode_probs, patterns = [], [], []
    for key in sorted(groups, key=lambda k: groups[k][0]):
        modes.append(apply_flip_pattern(label, key, flips))
        mode_probs.append(probs[key])
        patterns.append(groups[key])
    return modes, mode_probs, patterns


def flip_task_metadata() -> dict[str, Any]:
    """``datalist.json`` keys describing the flipped-class task (shared by scenes32 and the Cityscapes converter)."""
    return {
        "num_classes": NUM_CLASSES,
        "ignore_index": IGNORE_INDEX,
        "switchable_classes": list(SWITCHABLE_CLASSES),
        "class_names": list(CLASS_NAMES),
        "flips": [{"source": s, "target": t, "probability": p, "name": n} for s, t, p, n in FLIPS],
    }
