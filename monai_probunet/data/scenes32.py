"""``scenes32``: procedural street scenes with the 32-mode class-flipping ambiguity of Kohl et al. 2018, Sec. 4.2.

The Cityscapes task of the paper, on small synthetic images that a CPU trains on in minutes. Every image is an RGB
street scene (sky, buildings, road, sidewalk, vegetation, terrain, cars, persons, poles, signs, ...) with a label map
in the 19 Cityscapes *train ids* (:data:`TRAIN_ID_NAMES`) and ignore regions (:data:`IGNORE_INDEX` = 255: an
ego-vehicle hood at the bottom and a rectification border, as in Cityscapes). Five classes then flip to five new
classes, one Bernoulli draw per image per class, with the paper's probabilities (:data:`FLIPS`). The task itself
(classes, flips, modes) is defined in :mod:`monai_probunet.flip_task`; its names stay importable from here.

So there are ``2**5 = 32`` flip patterns (:func:`enumerate_modes`) with probabilities from 10.9 % (nothing flipped)
down to 0.5 % (everything flipped), 24 classes in all (:data:`NUM_CLASSES`), and the GED of the paper's Eq. 7 averages
the IoU over the 10 switchable classes (:data:`SWITCHABLE_CLASSES`). The flip is not visible in the image: only the
frequencies are learnable.

**Modes.** Where a flippable class is absent from an image, its flip changes nothing: the 32 patterns then give only
``2**v`` distinct label maps (v = flippable classes present). Each image stores only its *distinct* modes: identical
maps are merged and their probabilities summed (which equals the product of the flip probabilities of the visible
classes). The datalist entry says which of the 32 global patterns each stored mode stands for (``"mode_patterns"``:
lists of pattern indices of :func:`enumerate_modes`), and mode 0 is always the unflipped map. By default persons,
cars and vegetation are each left out of an image with probability ``absent_prob = 0.1`` (road and sidewalk are
always there), so most images have all 32 modes and some 16, 8 or 4.

**Graders.** ``num_graders`` label maps per image, each an independent draw of a flip pattern (the same Bernoulli
model), for Eq. 6 and for training with :class:`~monai_probunet.data.RandGraderd`; :class:`RandClassFlipd` instead
re-draws the flips on every visit (what the reference implementation does), which the bundle override
``bundle/configs/scenes32.yaml`` uses for training.

On disk (the project's format, :mod:`~monai_probunet.data.disk_format`): ``images/<case>.nii.gz`` is ``H x W x 3``
uint8 RGB (the channel axis last: load it with ``EnsureChannelFirstd(keys="image", channel_dim=-1)``), labels and modes
``H x W`` uint8. Cities play the role of patients: the split is city-level (:func:`patient_level_split`). Default
``40 cities x 10 images`` of ``64 x 128`` pixels (about 14,000 small files, 64 MB) is generated in about 10 s.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from scipy.ndimage import gaussian_filter

from ..flip_task import (  # the task's definition, re-exported here for compatibility
    BICYCLE,
    BUILDING,
    BUS,
    CAR,
    CLASS_NAMES,
    FENCE,
    FLIP_PROBS,
    FLIP_SOURCE_CLASSES,
    FLIP_TARGET_CLASSES,
    FLIPS,
    IGNORE_INDEX,
    LIGHT,
    NUM_CLASSES,
    PERSON,
    POLE,
    RIDER,
    ROAD,
    SIDEWALK,
    SIGN,
    SKY,
    SWITCHABLE_CLASSES,
    TERRAIN,
    TRAIN_ID_NAMES,
    TRUCK,
    VEGETATION,
    WALL,
    apply_flip_pattern,
    check_flips,
    distinct_modes,
    enumerate_modes,
    flip_task_metadata,
    pattern_index,
    unflip,
)
from .disk_format import DATALIST_NAME, SPLITS, atomic_dataset_dir, patient_level_split, write_nifti

__all__ = [
    "CLASS_NAMES",
    "FLIPS",
    "FLIP_PROBS",
    "FLIP_SOURCE_CLASSES",
    "FLIP_TARGET_CLASSES",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "SCENES32_VERSION",
    "SWITCHABLE_CLASSES",
    "TRAIN_ID_NAMES",
    "RandClassFlipd",
    "apply_flip_pattern",
    "distinct_modes",
    "enumerate_modes",
    "flip_task_metadata",
    "generate_scenes32",
    "pattern_index",
    "render_scene",
    "unflip",
    "write_flipped_case",
]

SCENES32_VERSION = 1


# --------------------------------------------------------------------------------------------- rendering

_BASE_COLOURS: dict[int, tuple[float, float, float]] = {
    ROAD: (0.33, 0.33, 0.35),
    SIDEWALK: (0.66, 0.60, 0.55),
    BUILDING: (0.55, 0.45, 0.40),
    WALL: (0.60, 0.58, 0.50),
    FENCE: (0.45, 0.40, 0.30),
    POLE: (0.25, 0.25, 0.27),
    LIGHT: (0.10, 0.10, 0.10),
    SIGN: (0.90, 0.80, 0.10),
    VEGETATION: (0.20, 0.45, 0.15),
    TERRAIN: (0.50, 0.55, 0.30),
    SKY: (0.45, 0.65, 0.92),
    PERSON: (0.55, 0.15, 0.20),
    RIDER: (0.15, 0.25, 0.60),
    TRUCK: (0.80, 0.80, 0.82),
    BUS: (0.85, 0.55, 0.10),
    BICYCLE: (0.10, 0.10, 0.12),
}
_CAR_COLOURS = np.array(
    [[0.75, 0.10, 0.10], [0.10, 0.20, 0.60], [0.85, 0.85, 0.88], [0.08, 0.08, 0.08], [0.55, 0.57, 0.60],
     [0.15, 0.45, 0.25], [0.90, 0.75, 0.20]]
)  # fmt: skip


def _jitter(rng: np.random.Generator, colour: Sequence[float], amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(colour) + rng.normal(0.0, amount, 3), 0.0, 1.0)


class _Canvas:
    """Label map + RGB image painted back to front."""

    def __init__(self, height: int, width: int) -> None:
        self.h, self.w = height, width
        self.yy, self.xx = np.mgrid[:height, :width].astype(np.float64)
        self.label = np.full((height, width), SKY, np.uint8)
        self.image = np.zeros((height, width, 3))

    def paint(self, mask: np.ndarray, cls: int, colour: np.ndarray | Sequence[float]) -> None:
        self.label[mask] = cls
        self.image[mask] = colour

    def rect(self, y0: float, y1: float, x0: float, x1: float) -> np.ndarray:
        return (self.yy >= y0) & (self.yy < y1) & (self.xx >= x0) & (self.xx < x1)

    def ellipse(self, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return ((self.yy - cy) / max(ry, 0.5)) ** 2 + ((self.xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def render_scene(
    rng: np.random.Generator, height: int = 64, width: int = 128, absent_prob: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene and its unflipped label map.

    Road (a perspective trapezoid towards a vanishing point on the horizon) and sidewalks are always present;
    persons, cars and vegetation are each left out with probability ``absent_prob``; buildings, terrain, walls,
    fences, poles, traffic signs and lights, riders on bicycles, trucks and buses appear at random. Ignore pixels:
    an ego-vehicle hood (probability 0.6) and a one-pixel rectification border (probability 0.5).

    Args:
        rng: random generator (the scene is a deterministic function of its state).
        height: image height H in pixels (>= 32).
        width: image width W in pixels (>= 32).
        absent_prob: probability that each of persons, cars and vegetation is left out of the scene.

    Returns:
        ``(image H x W x 3 uint8 RGB, label H x W uint8 train ids 0..18 and 255)``.
    """
    if height < 32 or width < 32:
        raise ValueError(f"height and width must be >= 32, got {height} x {width}.")
    if not 0.0 <= absent_prob <= 1.0:
        raise ValueError(f"absent_prob must be in [0, 1], got {absent_prob}.")
    h, w = height, width
    c = _Canvas(h, w)
    yy, xx = c.yy, c.xx
    # sky: vertical gradient, lighter towards the horizon
    horizon = rng.uniform(0.36, 0.5) * h
    sky_top, sky_low = _jitter(rng, _BASE_COLOURS[SKY]), _jitter(rng, (0.80, 0.86, 0.92))
    t_sky = np.clip(yy / horizon, 0, 1)[..., None]
    c.image[:] = sky_top * (1 - t_sky) + sky_low * t_sky
    # ground below the horizon: terrain, then sidewalks and road as perspective trapezoids
    ground = yy >= horizon
    c.paint(ground, TERRAIN, _jitter(rng, _BASE_COLOURS[TERRAIN]))
    xv = w * (0.5 + rng.uniform(-0.12, 0.12))
    depth = np.clip((yy - horizon) / (h - horizon), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom row
    road_half = 1.0 + w * rng.uniform(0.30, 0.48) * depth
    side_half = road_half * (1.0 + rng.uniform(0.35, 0.6)) + 1.0
    dist = np.abs(xx - xv)
    road = ground & (dist <= road_half)
    sidewalk = ground & ~road & (dist <= side_half)
    c.paint(sidewalk, SIDEWALK, _jitter(rng, _BASE_COLOURS[SIDEWALK]))
    c.paint(road, ROAD, _jitter(rng, _BASE_COLOURS[ROAD], 0.03))
    # lane marking (image only: it is road) and kerb (image only: it is sidewalk)
    marking = road & (dist <= 0.02 * road_half + 0.4) & (np.sin(depth * 40.0 / max(depth.mean(), 0.1)) > 0)
    c.image[marking] = 0.9
    kerb = sidewalk & (dist <= road_half + 0.8 + 0.04 * road_half)
    c.image[kerb] *= 1.25
    # buildings: facade segments along the horizon, some gaps of sky
    x = 0.0
    while x < w:
        seg = rng.uniform(0.08, 0.25) * w
        if rng.random() < 0.8:
            top = rng.uniform(0.02, 0.75) * horizon
            base = horizon + rng.uniform(0.0, 0.08) * h
            facade = c.rect(top, base, x, x + seg) & ~road & ~sidewalk
            colour = _jitter(rng, _BASE_COLOURS[BUILDING], 0.12)
            c.paint(facade, BUILDING, colour)
            period_y, period_x = rng.uniform(3.0, 6.0), rng.uniform(3.0, 7.0)
            rows, cols = np.mod(yy - top, period_y) < period_y * 0.45, np.mod(xx - x, period_x) < period_x * 0.5
            windows = facade & rows & cols
            c.image[windows] = colour * 0.45 + 0.1
        x += seg
    # walls and fences just outside the sidewalk
    if rng.random() < 0.35:
        cls = WALL if rng.random() < 0.5 else FENCE
        reach = rng.uniform(2.0, 6.0)
        band = ground & ~road & ~sidewalk & (dist <= side_half + reach) & (yy < horizon + 0.35 * (h - horizon))
        band |= ground & ~road & ~sidewalk & (dist > side_half) & (yy < horizon + rng.uniform(1.0, 3.0))
        colour = _jitter(rng, _BASE_COLOURS[cls])
        c.paint(band, cls, colour)
        if cls == FENCE:
            c.image[band & (np.mod(xx, 3) < 1)] = colour * 0.5
    # objects, painted far to near: (y of the foot point, kind)
    objects: list[tuple[float, str]] = []
    if rng.random() >= absent_prob:
        n = rng.integers(1, 4)
        objects += [(rng.uniform(horizon - 0.05 * h, horizon + 0.25 * (h - horizon)), "tree") for _ in range(n)]
    if rng.random() >= absent_prob:
        objects += [(rng.uniform(horizon + 3, h - 1), "car") for _ in range(rng.integers(1, 4))]
    if rng.random() >= absent_prob:
        objects += [(rng.uniform(horizon + 2, h - 1), "person") for _ in range(rng.integers(1, 4))]
    objects += [(rng.uniform(horizon + 1, h - 4), "pole") for _ in range(rng.integers(0, 3))]
    if rng.random() < 0.2:
        objects.append((rng.uniform(horizon + 4, h - 1), "rider"))
    if rng.random() < 0.15:
        foot = rng.uniform(horizon + 4, horizon + 0.6 * (h - horizon))
        objects.append((foot, "bus" if rng.random() < 0.5 else "truck"))
    for foot, kind in sorted(objects):
        d = float(np.clip((foot - horizon) / (h - horizon), 0.02, 1.0))  # perspective scale
        rh = 1.0 + w * rng.uniform(0.30, 0.48) * d  # road half width there (approximately)
        side = 1.0 if rng.random() < 0.5 else -1.0
        if kind == "tree":
            cx = xv + side * (rh * rng.uniform(1.5, 2.4) + rng.uniform(2.0, 0.3 * w))
            r = (0.08 + 0.22 * d) * h * rng.uniform(0.8, 1.3)
            cy = foot - 1.6 * r
            trunk = c.rect(cy, foot, cx - max(0.6, 0.08 * r), cx + max(0.6, 0.08 * r))
            canopy = c.ellipse(cy, cx, r, r * rng.uniform(0.8, 1.3))
            leaf = _jitter(rng, _BASE_COLOURS[VEGETATION], 0.05)
            c.paint(trunk, VEGETATION, (0.30, 0.22, 0.15))
            c.paint(canopy, VEGETATION, leaf)
            blotches = canopy & (gaussian_filter(rng.standard_normal((h, w)), 1.0) > 0.15)
            c.image[blotches] = leaf * 0.6
        elif kind == "car":
            cx = xv + rng.uniform(-0.75, 0.75) * rh
            cw = (0.05 + 0.3 * d) * w * rng.uniform(0.8, 1.15)
            ch = cw * rng.uniform(0.5, 0.65)
            colour = _jitter(rng, _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))], 0.04)
            body = c.rect(foot - 0.6 * ch, foot - 0.1 * ch, cx - cw / 2, cx + cw / 2)
            cabin = c.rect(foot - ch, foot - 0.55 * ch, cx - 0.35 * cw, cx + 0.35 * cw)
            wheels = c.ellipse(foot - 0.12 * ch, cx - 0.3 * cw, 0.13 * ch, 0.1 * cw) | c.ellipse(
                foot - 0.12 * ch, cx + 0.3 * cw, 0.13 * ch, 0.1 * cw
            )
            c.paint(body | cabin, CAR, colour)
            glass = cabin & c.rect(foot - 0.92 * ch, foot - 0.6 * ch, cx - 0.3 * cw, cx + 0.3 * cw)
            c.image[glass] = (0.55, 0.65, 0.75)
            c.paint(wheels, CAR, (0.05, 0.05, 0.05))
        elif kind == "person":
            cx = xv + side * rh * (1.0 + rng.uniform(0.1, 0.45))
            ph = (0.08 + 0.45 * d) * h * rng.uniform(0.85, 1.15)
            pw = ph * 0.28
            body = c.ellipse(foot - 0.55 * ph, cx, 0.3 * ph, pw / 2)
            legs = c.rect(foot - 0.35 * ph, foot, cx - pw / 2.5, cx + pw / 2.5)
            head = c.ellipse(foot - 0.9 * ph, cx, 0.1 * ph, 0.1 * ph + 0.3)
            c.paint(body | legs, PERSON, _jitter(rng, _BASE_COLOURS[PERSON], 0.15))
            c.paint(head, PERSON, _jitter(rng, (0.85, 0.65, 0.5), 0.08))
        elif kind == "pole":
            cx = xv + side * rh * rng.uniform(1.1, 1.5)
            ph = (0.2 + 0.9 * d) * h
            pole = c.rect(foot - ph, foot, cx - 0.5, cx + 0.5 + 0.5 * d * 3)
            c.paint(pole, POLE, _jitter(rng, _BASE_COLOURS[POLE], 0.03))
            s = 1.5 + 4.0 * d
            if rng.random() < 0.5:
                sign = c.rect(foot - ph, foot - ph + s, cx - s / 2, cx + s / 2 + 1)
                c.paint(sign, SIGN, _jitter(rng, _BASE_COLOURS[SIGN], 0.1))
            elif rng.random() < 0.6:
                box = c.rect(foot - ph, foot - ph + 2 * s, cx - s / 3, cx + s / 3 + 1)
                c.paint(box, LIGHT, _BASE_COLOURS[LIGHT])
                c.image[box & c.ellipse(foot - ph + s / 2, cx, s / 4 + 0.3, s / 4 + 0.3)] = (0.9, 0.2, 0.1)
        elif kind == "rider":
            cx = xv + side * rh * rng.uniform(0.75, 0.95)
            bh = (0.06 + 0.25 * d) * h
            wheels = c.ellipse(foot - bh / 2, cx - bh * 0.6, bh / 2, bh / 2)
            wheels |= c.ellipse(foot - bh / 2, cx + bh * 0.6, bh / 2, bh / 2)
            c.paint(wheels, BICYCLE, _BASE_COLOURS[BICYCLE])
            rider = c.ellipse(foot - 1.6 * bh, cx, 0.8 * bh, 0.3 * bh)
            rider |= c.ellipse(foot - 2.6 * bh, cx, 0.25 * bh + 0.3, 0.25 * bh + 0.3)
            c.paint(rider, RIDER, _jitter(rng, _BASE_COLOURS[RIDER], 0.1))
        else:  # bus / truck
            cls = BUS if kind == "bus" else TRUCK
            cx = xv + rng.uniform(-0.5, 0.5) * rh
            bw = (0.08 + 0.45 * d) * w
            bh = bw * rng.uniform(0.7, 0.9)
            box = c.rect(foot - bh, foot, cx - bw / 2, cx + bw / 2)
            colour = _jitter(rng, _BASE_COLOURS[cls], 0.06)
            c.paint(box, cls, colour)
            c.image[box & c.rect(foot - 0.9 * bh, foot - 0.6 * bh, cx - 0.45 * bw, cx + 0.45 * bw)] = colour * 0.4
    # global illumination, texture noise
    c.image *= rng.uniform(0.8, 1.15)
    c.image += gaussian_filter(rng.normal(0.0, 0.04, (h, w, 3)), (0.7, 0.7, 0)) + rng.normal(0.0, 0.015, (h, w, 3))
    # ignore regions: ego-vehicle hood and rectification border (painted last, as in Cityscapes)
    if rng.random() < 0.6:
        h0 = rng.uniform(0.07, 0.14) * h
        hood = yy >= h - h0 * np.clip(1.0 - ((xx - w / 2) / (0.75 * w)) ** 2, 0.0, 1.0)
        c.paint(hood, IGNORE_INDEX, _jitter(rng, (0.12, 0.12, 0.14), 0.03))
        c.image[hood & (np.abs(yy - (h - h0 * 0.7)) < 0.6)] += 0.2
    if rng.random() < 0.5:
        border = (xx < 1) | (xx >= w - 1) | (yy >= h - 1)
        c.paint(border, IGNORE_INDEX, (0.0, 0.0, 0.0))
    image = np.clip(np.round(c.image * 255.0), 0, 255).astype(np.uint8)
    return image, c.label


# --------------------------------------------------------------------------------------------- dataset


def write_flipped_case(
    root: Path, case: str, patient_id: str, image: np.ndarray, modes: Sequence[np.ndarray],
    mode_probs: Sequence[float], mode_patterns: Sequence[Sequence[int]], draws: Sequence[int],
) -> dict[str, Any]:
    """Write one flipped-class case (image, one grader map per draw, the distinct modes) under ``root`` as NIfTI.

    Args:
        root: dataset folder (``images/``, ``labels/``, ``modes/`` must exist).
        case: case id (file stem); patient_id: its patient (city) for the split.
        image: ``H x W x 3`` uint8 image; modes: ``M`` label maps ``H x W``.
        mode_probs, mode_patterns: per mode its probability and the flip patterns it merges (:func:`distinct_modes`).
        draws: per grader the flip pattern drawn (an index into :func:`enumerate_modes`).

    Returns:
        The datalist entry, paths relative to ``root``.
    """
    mode_of = {j: m for m, group in enumerate(mode_patterns) for j in group}
    item: dict[str, Any] = {
        "image": f"images/{case}.nii.gz",
        "label": [f"labels/{case}_g{g}.nii.gz" for g in range(len(draws))],
        "modes": [f"modes/{case}_m{j:02d}.nii.gz" for j in range(len(modes))],
        "mode_probs": list(mode_probs),
        "mode_patterns": mode_patterns,
        "grader_patterns": [int(j) for j in draws],
        "patient_id": patient_id,
        "case_id": case,
    }
    write_nifti(root / item["image"], image, (1.0, 1.0))
    for g, j in enumerate(draws):
        write_nifti(root / item["label"][g], modes[mode_of[int(j)]], (1.0, 1.0))
    for j, mode in enumerate(modes):
        write_nifti(root / item["modes"][j], mode, (1.0, 1.0))
    return item


def generate_scenes32(
    root: str | Path,
    seed: int = 0,
    num_cities: int = 40,
    images_per_city: int = 10,
    image_size: Sequence[int] = (64, 128),
    num_graders: int = 8,
    absent_prob: float = 0.1,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
) -> Path:
    """Generate the ``scenes32`` dataset into ``root`` (atomically) and return the path of its ``datalist.json``.

    Each entry: ``image`` (``H x W x 3`` uint8 RGB), ``label`` (``num_graders`` flipped label maps, one Bernoulli per
    class each), ``modes`` + ``mode_probs`` (the image's distinct modes, mode 0 unflipped), ``mode_patterns`` (per
    mode, the :func:`enumerate_modes` indices it stands for), ``grader_patterns`` (per grader, its pattern index),
    ``patient_id`` (the city), ``case_id``. The datalist also records ``num_classes``, ``ignore_index``,
    ``switchable_classes``, ``class_names``, ``flips`` and the generator parameters (the cache key).

    Args:
        root: output folder (replaced if it exists).
        seed: random seed; same seed and parameters, same files. Image ``k`` of city ``c`` is drawn from its own
            generator seeded with ``(seed, c, k)``.
        num_cities: number of cities; the split is city-level (cities play the role of patients).
        images_per_city: scenes per city.
        image_size: ``(H, W)``, each >= 32.
        num_graders: flipped label maps per image.
        absent_prob: probability that persons, cars, vegetation are each left out of a scene.
        split_fractions: training/validation/test fractions of cities.
    """
    size = [int(v) for v in image_size]
    if len(size) != 2:
        raise ValueError(f"image_size must be (H, W), got {list(image_size)}.")
    if num_cities < 3 or images_per_city < 1 or num_graders < 1:
        raise ValueError(
            f"need num_cities >= 3 (one per split), images_per_city >= 1 and num_graders >= 1, got {num_cities}, "
            f"{images_per_city}, {num_graders}."
        )
    params: dict[str, Any] = {
        "seed": seed,
        "num_cities": num_cities,
        "images_per_city": images_per_city,
        "image_size": size,
        "num_graders": num_graders,
        "absent_prob": absent_prob,
        "split_fractions": list(split_fractions),
    }
    cities = [f"CITY-{c:03d}" for c in range(num_cities)]
    split_of = patient_level_split(cities, split_fractions, seed)
    patterns = enumerate_modes(FLIP_PROBS)
    datalist: dict[str, Any] = {
        "name": "scenes32",
        "description": "procedural street scenes, Cityscapes train ids, 5 classes flipped at random (32 modes)",
        "generator": {"name": "scenes32", "version": SCENES32_VERSION, "params": params},
        "num_graders": num_graders,
        **flip_task_metadata(),
        "patterns": [{"index": j, "flips": list(b), "probability": p} for j, (b, p) in enumerate(patterns)],
        **{s: [] for s in SPLITS},
    }
    probs = np.array([p for _, p in patterns])
    with atomic_dataset_dir(root) as tmp:
        for sub in ("images", "labels", "modes"):
            (tmp / sub).mkdir()
        for ci, city in enumerate(cities):
            for k in range(images_per_city):
                rng = np.random.default_rng([seed, ci, k])
                image, label = render_scene(rng, size[0], size[1], absent_prob)
                modes, mode_probs, mode_patterns = distinct_modes(label)
                draws = rng.choice(len(patterns), size=num_graders, p=probs / probs.sum())
                item = write_flipped_case(tmp, f"{city}_{k:03d}", city, image, modes, mode_probs, mode_patterns, draws)
                datalist[split_of[city]].append(item)
        (tmp / DATALIST_NAME).write_text(json.dumps(datalist, indent=1))
    return Path(root) / DATALIST_NAME


# --------------------------------------------------------------------------------------------- transform


class RandClassFlipd(Randomizable, MapTransform):
    """Re-draw the class flips of a label map on every call (the reference implementation's on-line flipping).

    Each channel of each key is first un-flipped (:func:`unflip`) and then flipped with a fresh, independent
    Bernoulli draw per flippable class; ignore pixels and other classes are unchanged. Placed after
    :class:`~monai_probunet.data.RandGraderd` it turns any grader map into an exact draw from the 32-mode
    distribution, so training does not see only the few stored graders' patterns.

    Args:
        keys: label keys (``A x *spatial`` integer maps, numpy or torch).
        flip_probs: one probability per flip of ``flips`` (default: the paper's).
        flips: ``(source, target, probability, name)`` per flippable class (default :data:`FLIPS`).
        allow_missing_keys: don't raise if a key is missing.

    Shapes:
        ``A x *spatial`` -> ``A x *spatial``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        flip_probs: Sequence[float] | None = None,
        flips: Sequence[tuple[int, int, float, str]] = FLIPS,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        check_flips(flips)
        self.flips = tuple(tuple(f) for f in flips)
        self.flip_probs = np.array([f[2] for f in flips] if flip_probs is None else list(flip_probs), dtype=np.float64)
        if self.flip_probs.shape != (len(flips),) or ((self.flip_probs < 0) | (self.flip_probs > 1)).any():
            raise ValueError(f"flip_probs must be {len(flips)} probabilities in [0, 1], got {flip_probs}.")
        self._bits = np.zeros((0, len(flips)), dtype=np.int64)

    def randomize(self, num_maps: int) -> None:  # type: ignore[override]
        self._bits = (self.R.random_sample((num_maps, len(self.flips))) < self.flip_probs).astype(np.int64)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            stack = d[key]
            if stack.ndim < 2:
                raise ValueError(f"RandClassFlipd: {key!r} must be A x *spatial, got shape {tuple(stack.shape)}.")
            self.randomize(stack.shape[0])
            base = unflip(stack, self.flips)
            out = base.clone() if isinstance(base, torch.Tensor) else base.copy()
            for a in range(stack.shape[0]):
                out[a] = apply_flip_pattern(base[a], self._bits[a].tolist(), self.flips)
            d[key] = out
        return d
