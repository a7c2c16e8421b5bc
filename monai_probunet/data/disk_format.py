"""The project's on-disk dataset format, shared by the built-in datasets and the LIDC pipeline.

A dataset folder holds::

    datalist.json           splits "training" / "validation" / "test" (patient-level), plus metadata
    images/<case>.nii.gz    one image per case (float32 HU, 2-D or 3-D, affine = voxel spacing in mm)
    labels/<case>_g<k>.nii.gz  one binary mask per grader k = 0..A-1 (a missing grader is an empty mask)
    modes/<case>_m<j>.nii.gz   optional: the modes of the known ground-truth distribution

Each datalist entry is ``{"image": path, "label": [A paths], "patient_id": str, "case_id": str}`` and, where the
true distribution is known, ``"modes": [M paths], "mode_probs": [M floats]`` (paths relative to the folder).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import load_decathlon_datalist

__all__ = [
    "DATALIST_NAME",
    "SPLITS",
    "write_nifti",
    "load_datalist",
    "validate_datalist",
    "patient_level_split",
    "atomic_dataset_dir",
]

DATALIST_NAME = "datalist.json"
SPLITS = ("training", "validation", "test")


def write_nifti(path: str | Path, array: np.ndarray, spacing: Sequence[float]) -> None:
    """Write a 2-D or 3-D array as NIfTI with a diagonal affine of ``spacing`` (mm)."""
    spacing = list(spacing) + [1.0] * (3 - len(spacing))
    affine = np.diag([*spacing[:3], 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))


def patient_level_split(
    patient_ids: Sequence[str], fractions: Sequence[float] | Sequence[int], seed: int
) -> dict[str, str]:
    """Assign every patient to a split; same seed and patients, same split.

    Args:
        patient_ids: patient identifiers (duplicates are collapsed).
        fractions: three fractions (summing to 1) or three patient counts, for training/validation/test.
        seed: random seed of the permutation.

    Returns:
        ``{patient_id: split name}``.
    """
    patients = sorted(set(patient_ids))
    if len(fractions) != 3:
        raise ValueError(f"fractions must give 3 values (training, validation, test), got {list(fractions)}.")
    n = len(patients)
    if all(isinstance(f, int) for f in fractions):
        counts = [int(f) for f in fractions]
        if sum(counts) > n:
            scale = n / sum(counts)
            counts = [int(round(c * scale)) for c in counts]
    else:
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {list(fractions)}.")
        counts = [int(round(f * n)) for f in fractions]
    counts[0] = n - counts[1] - counts[2]
    order = np.random.default_rng(seed).permutation(n)
    assignment: dict[str, str] = {}
    bounds = np.cumsum([0, *counts])
    for split, lo, hi in zip(SPLITS, bounds[:-1], bounds[1:]):
        for i in order[lo:hi]:
            assignment[patients[i]] = split
    return assignment


def validate_datalist(path: str | Path) -> dict[str, Any]:
    """Read ``datalist.json`` and check its structure; raise a clear error naming the file and key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset list {path} does not exist (expected a {DATALIST_NAME} with splits {SPLITS}).")
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object with keys {SPLITS}, got {type(content).__name__}.")
    for split in ("training", "validation"):
        if not isinstance(content.get(split), list) or not content[split]:
            raise ValueError(f"{path}: key {split!r} must be a non-empty list of cases.")
    for split in SPLITS:
        for i, item in enumerate(content.get(split, [])):
            if not isinstance(item, dict) or "image" not in item or "label" not in item:
                raise ValueError(f"{path}: {split}[{i}] must be an object with 'image' and 'label' keys.")
            labels = item["label"]
            if not isinstance(labels, list) or not labels or not all(isinstance(p, str) for p in labels):
                raise ValueError(f"{path}: {split}[{i}]['label'] must be a non-empty list of grader mask paths.")
    return content


def load_datalist(path: str | Path, split: str = "training") -> list[dict[str, Any]]:
    """Cases of one split with absolute paths (MONAI's decathlon reader); checks that the files exist."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    path = Path(path)
    content = validate_datalist(path)
    if split not in content:
        raise ValueError(f"{path} has no {split!r} split.")
    items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split, base_dir=str(path.parent))
    for item in items[:1] + items[-1:]:
        for f in [item["image"], *item["label"]]:
            if not os.path.exists(f):
                raise FileNotFoundError(f"{path}: {split} case {item.get('case_id', '?')} refers to missing file {f}.")
    return items


class atomic_dataset_dir:
    """Context manager: build a dataset in a temporary sibling folder, then move it into place.

    Nothing half-written is left at ``root``: on error the temporary folder is removed; on success it replaces
    ``root`` (if another process finished first, its result is kept and ours discarded).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp = self.root.parent / f".{self.root.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        self.root.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.root.exists():
            shutil.rmtree(self.root)
        try:
            os.replace(self.tmp, self.root)
        except OSError:
            if not (self.root / DATALIST_NAME).is_file():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
