"""``shapes``: procedural CT-like lesion crops whose grader masks come from a known distribution per image.

Every image shows one of six lesion types on a lung-like background (parenchyma around -850 HU, vessels,
smooth fluctuations, noise). The type is visible in the image and fixes the outline variants (modes) and
their probabilities; the four grader masks are independent draws from that distribution, so only the
frequencies are random:

==============  ======================================  ==================
type            modes                                   probabilities
==============  ======================================  ==================
``none``        empty                                   1
``solid``       core                                    1
``solid_halo``  core, core + ground-glass halo          1/2, 1/2
``faint``       empty, core                             1/2, 1/2
``faint_halo``  empty, core, core + halo                1/4, 1/2, 1/4
``satellite``   core, core + satellite nodule           1/2, 1/2
==============  ======================================  ==================
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

from .disk_format import DATALIST_NAME, SPLITS, atomic_dataset_dir, patient_level_split, write_nifti

__all__ = ["LESION_TYPES", "generate_shapes", "render_shapes_case", "SHAPES_VERSION"]

SHAPES_VERSION = 1

#: type -> (frequency among images, [(mode name, probability), ...])
LESION_TYPES: dict[str, tuple[float, list[tuple[str, float]]]] = {
    "none": (0.10, [("empty", 1.0)]),
    "solid": (0.18, [("core", 1.0)]),
    "solid_halo": (0.18, [("core", 0.5), ("halo", 0.5)]),
    "faint": (0.18, [("empty", 0.5), ("core", 0.5)]),
    "faint_halo": (0.18, [("empty", 0.25), ("core", 0.5), ("halo", 0.25)]),
    "satellite": (0.18, [("core", 0.5), ("satellite", 0.5)]),
}


def _ellipse(shape: tuple[int, int], centre: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / radii[0]) ** 2 + (v / radii[1]) ** 2 <= 1.0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    img = -850.0 + 40.0 * gaussian_filter(rng.standard_normal((size, size)), size / 16) * (size / 16)
    vessels = np.zeros((size, size))
    t = np.linspace(0, 1, 4 * size)
    for _ in range(rng.integers(2, 6)):
        p0, p1, p2 = rng.uniform(0, size, (3, 2))
        curve = ((1 - t) ** 2)[:, None] * p0 + (2 * (1 - t) * t)[:, None] * p1 + (t**2)[:, None] * p2
        idx = np.clip(np.round(curve).astype(int), 0, size - 1)
        vessels[idx[:, 0], idx[:, 1]] = rng.uniform(0.5, 1.0)
    img += 550.0 * np.clip(gaussian_filter(vessels, 0.6) * 2.0, 0, 1)
    return img


def render_shapes_case(rng: np.random.Generator, size: int, lesion_type: str) -> tuple[np.ndarray, list[np.ndarray], list[float]]:
    """Render one case.

    Args:
        rng: random generator (the case is a deterministic function of its state).
        size: image side in pixels.
        lesion_type: one of :data:`LESION_TYPES`.

    Returns:
        ``(image size x size float32 HU, modes: list of size x size uint8 masks, mode probabilities)``.
    """
    if lesion_type not in LESION_TYPES:
        raise ValueError(f"unknown lesion type {lesion_type!r}; expected one of {sorted(LESION_TYPES)}.")
    shape = (size, size)
    img = _background(rng, size)
    centre = size / 2 - 0.5 + rng.uniform(-size / 16, size / 16, 2)
    radii = rng.uniform(size / 18, size / 8, 2)
    angle = rng.uniform(0, np.pi)
    core = _ellipse(shape, centre, radii, angle)
    halo = _ellipse(shape, centre, radii * 1.8, angle)
    direction = rng.uniform(0, 2 * np.pi)
    sat_centre = centre + (radii.max() * 1.8 + size / 20) * np.array([np.sin(direction), np.cos(direction)])
    satellite = _ellipse(shape, sat_centre, np.full(2, size / 22), 0.0)
    paint = np.zeros(shape)
    if lesion_type in ("solid", "solid_halo", "satellite"):
        paint[core] = 880.0  # ~ +30 HU: solid soft tissue
    if lesion_type in ("faint", "faint_halo"):
        paint[core] = 420.0  # ~ -430 HU: part-solid / ground-glass nodule
    if lesion_type in ("solid_halo", "faint_halo"):
        paint[halo & ~core] = 230.0  # ~ -620 HU: faint ground-glass halo
    if lesion_type == "satellite":
        paint[satellite] = 880.0
    img += gaussian_filter(paint, 0.7) + rng.normal(0.0, 25.0, shape)
    masks = {
        "empty": np.zeros(shape, np.uint8),
        "core": core.astype(np.uint8),
        "halo": halo.astype(np.uint8),
        "satellite": (core | satellite).astype(np.uint8),
    }
    modes = LESION_TYPES[lesion_type][1]
    return img.astype(np.float32), [masks[m] for m, _ in modes], [p for _, p in modes]


def generate_shapes(
    root: str | Path,
    seed: int = 0,
    num_patients: int = 240,
    images_per_patient: int = 2,
    image_size: int = 64,
    num_graders: int = 4,
    split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
    spacing: float = 0.5,
) -> Path:
    """Generate the ``shapes`` dataset into ``root`` (atomically) and return the path of its ``datalist.json``.

    Args:
        root: output folder (replaced if it exists).
        seed: random seed; same seed and parameters, same files.
        num_patients: number of synthetic patients (splits are patient-level).
        images_per_patient: lesion crops per patient.
        image_size: side of each square image in pixels.
        num_graders: grader masks per image, drawn independently from the image's mode distribution.
        split_fractions: training/validation/test fractions of patients.
        spacing: pixel spacing in mm written to the NIfTI affine.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}.")
    names = list(LESION_TYPES)
    freqs = np.array([LESION_TYPES[n][0] for n in names])
    params: dict[str, Any] = {
        "seed": seed,
        "num_patients": num_patients,
        "images_per_patient": images_per_patient,
        "image_size": image_size,
        "num_graders": num_graders,
        "split_fractions": list(split_fractions),
        "spacing": spacing,
    }
    patients = [f"SHAPES-{p:04d}" for p in range(num_patients)]
    split_of = patient_level_split(patients, split_fractions, seed)
    datalist: dict[str, Any] = {
        "name": "shapes",
        "description": "procedural CT-like lesion crops with a known distribution of grader masks per image",
        "generator": {"name": "shapes", "version": SHAPES_VERSION, "params": params},
        "spacing": [spacing, spacing],
        "num_graders": num_graders,
        "labels": {"background": 0, "lesion": 1},
        **{s: [] for s in SPLITS},
    }
    with atomic_dataset_dir(root) as tmp:
        for sub in ("images", "labels", "modes"):
            (tmp / sub).mkdir()
        for p, patient in enumerate(patients):
            for k in range(images_per_patient):
                rng = np.random.default_rng([seed, p, k])
                lesion_type = names[rng.choice(len(names), p=freqs / freqs.sum())]
                image, modes, probs = render_shapes_case(rng, image_size, lesion_type)
                draws = rng.choice(len(modes), size=num_graders, p=probs)
                case = f"{patient}_{k}"
                item = {
                    "image": f"images/{case}.nii.gz",
                    "label": [f"labels/{case}_g{g}.nii.gz" for g in range(num_graders)],
                    "modes": [f"modes/{case}_m{j}.nii.gz" for j in range(len(modes))],
                    "mode_probs": probs,
                    "patient_id": patient,
                    "case_id": case,
                    "lesion_type": lesion_type,
                }
                write_nifti(tmp / item["image"], image, (spacing, spacing))
                for g, j in enumerate(draws):
                    write_nifti(tmp / item["label"][g], modes[j], (spacing, spacing))
                for j, mode in enumerate(modes):
                    write_nifti(tmp / item["modes"][j], mode, (spacing, spacing))
                datalist[split_of[patient]].append(item)
        (tmp / DATALIST_NAME).write_text(json.dumps(datalist, indent=1))
    return Path(root) / DATALIST_NAME
