"""Checks of every case of a dataset in the on-disk format, run before training so bad data fails at once."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from .disk_format import SPLITS, DatasetError, validate_datalist

__all__ = ["validate_cases"]

#: problems listed in the error; the rest are counted
MAX_LISTED = 20
#: what reading a damaged or foreign file raises (not a NIfTI, truncated gzip, bad header)
_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)


def _resolve(base: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:6])
    return shown + (f", ... ({len(values)} distinct values)" if len(values) > 6 else "")


def _check_case(base: Path, split: str, index: int, item: dict[str, Any]) -> list[str]:
    """Problems of one case: missing or unreadable files, label values outside {0, 1}, shape mismatches."""
    case = f"{split} case {item.get('case_id', index)!s}"
    problems: list[str] = []
    image_path = _resolve(base, item["image"])
    image_shape = None
    if not image_path.is_file():
        problems.append(f"{case}: image {image_path} does not exist.")
    else:
        try:
            image_shape = tuple(nib.load(str(image_path)).shape)
        except _READ_ERRORS as e:
            problems.append(f"{case}: image {image_path} cannot be read as NIfTI ({type(e).__name__}: {e}).")
    for label in item["label"]:
        label_path = _resolve(base, label)
        if not label_path.is_file():
            problems.append(f"{case}: label {label_path} does not exist.")
            continue
        try:
            array = np.asanyarray(nib.load(str(label_path)).dataobj)
        except _READ_ERRORS as e:
            problems.append(f"{case}: label {label_path} cannot be read as NIfTI ({type(e).__name__}: {e}).")
            continue
        values = np.unique(array)
        bad = values[~np.isin(values, (0, 1))]
        if bad.size:
            problems.append(
                f"{case}: label {label_path} holds values {_values_text(values)}; a grader mask must hold only "
                "0 (background) and 1 (lesion)."
            )
        spatial = image_shape[: array.ndim] if image_shape is not None else None
        if spatial is not None and tuple(array.shape) != spatial:
            problems.append(
                f"{case}: label {label_path} has shape {tuple(array.shape)}, its image {image_path} has shape "
                f"{image_shape}."
            )
    return problems


def validate_cases(datalist: str | Path, splits: Iterable[str] = SPLITS, num_threads: int = 4) -> dict[str, Any]:
    """Check every case of a dataset before it is used, and report every problem at once.

    For each case of ``splits``: the image and every grader mask exist and are readable NIfTI, each mask holds
    only the values 0 and 1 (a 0/255 or 0/0.5 mask, a label map with class 2, a -1 are refused, not guessed),
    each mask's shape equals its image's (spatial) shape; and every case has the same number of grader masks.

    Args:
        datalist: the dataset's ``datalist.json`` (paths in it relative to its folder, or absolute).
        splits: the splits to check (those absent from the file are skipped).
        num_threads: threads reading the files (NIfTI decompression releases the GIL).

    Returns:
        the datalist content (as :func:`~monai_probunet.data.disk_format.validate_datalist`).

    Raises:
        DatasetError: one line per problem (case, file, what was found and expected), at most
            :data:`MAX_LISTED` listed and the rest counted.
    """
    path = Path(datalist)
    content = validate_datalist(path)
    cases = [(split, i, item) for split in splits for i, item in enumerate(content.get(split, []))]
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        per_case = list(pool.map(lambda c: _check_case(path.parent, *c), cases))
    problems = [p for found in per_case for p in found]
    counts = Counter(len(item["label"]) for _, _, item in cases)
    if len(counts) > 1:
        usual = counts.most_common(1)[0][0]
        for split, i, item in cases:
            if len(item["label"]) != usual:
                problems.append(
                    f"{split} case {item.get('case_id', i)!s}: {len(item['label'])} grader masks, most cases have "
                    f"{usual}; every case needs the same number of graders (an absent grader is an empty mask)."
                )
    if problems:
        listed = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more problems" if len(problems) > MAX_LISTED else ""
        raise DatasetError(
            f"{path}: {len(problems)} problem(s) in the dataset, nothing was trained:\n  " + "\n  ".join(listed) + more
        )
    return content
