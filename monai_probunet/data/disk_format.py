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

import difflib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..bundle_utils import UserInputError, folder_write_problem
from ..io_utils import read_json, remove_stale_temporaries, temporary_prefix

__all__ = [
    "DATALIST_NAME",
    "SPLITS",
    "DatasetError",
    "DatasetFileNotFoundError",
    "write_nifti",
    "case_path",
    "load_datalist",
    "validate_datalist",
    "patient_level_split",
    "generated_by",
    "atomic_dataset_dir",
    "check_converter_output",
]

DATALIST_NAME = "datalist.json"
SPLITS = ("training", "validation", "test")
#: what a built-in dataset generator writes into its folder (anything else there is someone else's)
GENERATED_ENTRIES = frozenset({DATALIST_NAME, "images", "labels", "modes"})


class DatasetError(UserInputError, ValueError):
    """A dataset folder or ``datalist.json`` that cannot be used as given; the message names the file or folder."""


class DatasetFileNotFoundError(UserInputError, FileNotFoundError):
    """A dataset file that does not exist; the message names it."""


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


#: how alike (difflib ratio, lower case) a top-level key must be to a split's name to be taken for a misspelt split
SPLIT_NAME_SIMILARITY = 0.8


def _is_case_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "image" in v for v in value)


def _misplaced_splits(content: dict[str, Any]) -> list[str]:
    """Top-level keys that are not splits but look like one: a list of cases, or a list under a name close to a
    split's (``"tests"``, ``"valdation"``, ``"Test"``); the datalist's other keys are free metadata."""
    found = []
    for key, value in content.items():
        if key in SPLITS or not isinstance(value, list):
            continue
        close = difflib.get_close_matches(key.lower(), SPLITS, n=1, cutoff=SPLIT_NAME_SIMILARITY)
        if not close and not _is_case_list(value):
            continue
        held = f"{len(value)} case{'' if len(value) == 1 else 's'}"
        found.append(f"{key!r} ({held}" + (f"; did you mean {close[0]!r}?)" if close else ")"))
    return found


def validate_datalist(path: str | Path) -> dict[str, Any]:
    """Read ``datalist.json`` and check its structure; raise a clear error naming the file and key.

    The splits are :data:`SPLITS` (``training`` and ``validation`` required, ``test`` optional); any other top-level
    key is metadata (``name``, ``description``, ``spacing``, ``num_graders``, ``generator``, ...), but a key that holds
    cases or whose name is close to a split's (a misspelt split, whose cases would never be used) is refused.
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        raise DatasetError(f"dataset folder {path.parent} is a file, not a folder holding {DATALIST_NAME}.")
    if not path.is_file():
        raise DatasetFileNotFoundError(
            f"dataset list {path} does not exist (expected a {DATALIST_NAME} with splits {SPLITS})."
        )
    content = read_json(path, error=DatasetError)
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: expected a JSON object with keys {SPLITS}, got {type(content).__name__}.")
    misplaced = _misplaced_splits(content)
    if misplaced:
        many = len(misplaced) > 1
        raise DatasetError(
            f"{path}: top-level key{'s' if many else ''} {', '.join(misplaced)} "
            f"{'are not splits, so no case in them' if many else 'is not a split, so no case in it'} would be used: "
            f"the splits are {', '.join(map(repr, SPLITS))} (the other top-level keys are metadata and hold no cases)."
        )
    for split in ("training", "validation"):
        if not isinstance(content.get(split), list) or not content[split]:
            raise DatasetError(f"{path}: key {split!r} must be a non-empty list of cases.")
    for split in SPLITS:
        if not isinstance(content.get(split, []), list):
            raise DatasetError(f"{path}: key {split!r} must be a list of cases.")
        for i, item in enumerate(content.get(split, [])):
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) or "label" not in item:
                raise DatasetError(
                    f"{path}: {split}[{i}] must be an object with 'image' and 'label' keys ('image' a file path)."
                )
            labels = item["label"]
            if not isinstance(labels, list) or not labels or not all(isinstance(p, str) for p in labels):
                raise DatasetError(f"{path}: {split}[{i}]['label'] must be a non-empty list of grader mask paths.")
    return content


def case_path(base: str | Path, path: str) -> Path:
    """Where a path of a datalist entry points: ``~`` expanded to the home folder, then an absolute path as it is and
    a relative one under ``base`` (the datalist's folder), normalised (``a/../b`` is ``b``)."""
    expanded = os.path.expanduser(path)
    return Path(os.path.normpath(expanded if os.path.isabs(expanded) else os.path.join(base, expanded)))


def _case_paths(base: Path, value: Any) -> Any:
    """:func:`case_path` of a path or of each path of a list of them; another value as it is."""
    if isinstance(value, str):
        return str(case_path(base, value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [str(case_path(base, v)) for v in value]
    return value


def load_datalist(path: str | Path, split: str = "training") -> list[dict[str, Any]]:
    """Cases of one split with absolute paths (MONAI's decathlon reader; ``image``, ``label`` and ``modes`` as
    :func:`case_path` resolves them, ``~`` expanded as the checks of the cases expand it); checks that the files of the
    first and last case exist."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    path = Path(path)
    content = validate_datalist(path)
    if split not in content:
        raise DatasetError(f"{path} has no {split!r} split.")
    from monai.data import load_decathlon_datalist  # MONAI only where a datalist is loaded

    items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split, base_dir=str(path.parent))
    for item, entry in zip(items, content[split]):
        for key in ("image", "label", "modes"):
            if key in entry:
                item[key] = _case_paths(path.parent, entry[key])
    for item in items[:1] + items[-1:]:
        for f in [item["image"], *item["label"]]:
            if not os.path.exists(f):
                raise DatasetFileNotFoundError(
                    f"{path}: {split} case {item.get('case_id', '?')} refers to missing file {f}."
                )
    return items


def generated_by(root: str | Path) -> str | None:
    """The name of the built-in generator that wrote the dataset folder ``root``, else ``None``.

    A generator marks its folder by the ``generator`` block (``{"name", "version", "params"}``) of the
    ``datalist.json`` it writes; a folder counts as the project's only if it has that block and holds nothing
    but what generators write (:data:`GENERATED_ENTRIES`), so a user's own files are never taken for a cache.
    """
    root = Path(root)
    try:
        content = json.loads((root / DATALIST_NAME).read_text())
        entries = {p.name for p in root.iterdir()}
    except (OSError, ValueError):
        return None
    block = content.get("generator") if isinstance(content, dict) else None
    name = block.get("name") if isinstance(block, dict) else None
    if not isinstance(name, str) or not entries <= GENERATED_ENTRIES:
        return None
    return name


def check_converter_output(out: Path, arg: str, generator: str, entries: frozenset[str] | set[str]) -> None:
    """Refuse an output folder of a converter (``preprocessing.lidc``, ``preprocessing.cityscapes``) that holds
    something the converter did not write; its files are never replaced.

    Converters write into their folder as they go, so that an interrupted run resumes. The folder may be missing,
    empty, a finished run of ``generator`` (its ``datalist.json`` has that ``generator`` block) or an unfinished one
    (no ``datalist.json`` yet); in both of the last two it may hold only ``entries`` and ``datalist.json``.

    Args:
        out: the folder.
        arg: the option as given, for the message (``--out DIR``).
        generator: the ``generator`` name the converter writes into ``datalist.json``.
        entries: the files and folders the converter writes.

    Raises:
        DatasetError: one line naming the folder, what is in it and what to give instead (or why it cannot be
            written).
    """
    if not str(arg).strip():
        raise DatasetError("--out is empty: give the dataset folder to write (or resume).")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"--out {arg} is a file, not a folder; give the dataset folder to write (or resume).")
    problem = folder_write_problem(out)
    if problem is not None:
        raise DatasetError(f"--out {arg} {problem}.")
    if not out.is_dir():
        return
    names = {p.name for p in out.iterdir()}
    try:
        content = json.loads((out / DATALIST_NAME).read_text()) if DATALIST_NAME in names else None
    except (OSError, ValueError):
        content = None
    block = content.get("generator") if isinstance(content, dict) else None
    ours = DATALIST_NAME not in names or (isinstance(block, dict) and block.get("name") == generator)
    foreign = sorted(names - set(entries) - ({DATALIST_NAME} if ours else set()))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise DatasetError(f"--out {arg} holds files {generator} did not write ({shown}); it is left untouched: give "
                           "a new or empty folder, or the folder of an earlier run of it to resume.")


class atomic_dataset_dir:
    """Context manager: build a dataset in a temporary sibling folder, then move it into place.

    ``root`` must be missing, an empty folder, or a dataset a built-in generator wrote (:func:`generated_by`);
    anything else is refused with :class:`DatasetError` before any work, so a user's folder is never replaced.
    Nothing half-written is left at ``root``: the dataset is built in a temporary sibling
    (``.<name>.probunet-<pid>-dataset.partial``), which is removed on error; on success the previous dataset is
    renamed aside (``.old``), the new one renamed onto ``root`` and the old one deleted (if another process finished
    first, its result is kept and ours discarded). Such temporary siblings left by a killed process (whose pid is
    gone) are removed on entry (:func:`~monai_probunet.io_utils.remove_stale_temporaries`).

    Args:
        root: the dataset folder.
        advice: what the refusal of a folder holding other files tells the user to do instead (default: the bundle
            options ``--dataset_name folder`` / ``--dataset_dir``).
    """

    def __init__(self, root: str | Path, advice: str | None = None) -> None:
        self.root = Path(root)
        self.advice = advice or (
            "For your own data in the on-disk format add --dataset_name folder; for a built-in dataset give a new or "
            "empty --dataset_dir."
        )
        self.tmp = self.root.parent / f"{temporary_prefix(self.root.name)}dataset.partial"
        self.old = self.root.parent / f"{temporary_prefix(self.root.name)}dataset.old"

    def _check_replaceable(self) -> None:
        root = self.root
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            raise DatasetError(f"dataset folder {root} is a file or link, not a folder; give a folder path.")
        if root.is_dir() and any(root.iterdir()) and generated_by(root) is None:
            raise DatasetError(
                f"dataset folder {root} holds files this project did not generate; it is left untouched. {self.advice}"
            )

    def __enter__(self) -> Path:
        self._check_replaceable()
        problem = folder_write_problem(self.root, beside=True)  # it is built beside itself, then moved into place
        if problem is not None:
            raise DatasetError(f"dataset folder {self.root} {problem}.")
        self.root.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.root.parent, self.root.name)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            self._check_replaceable()  # the folder may have changed while we generated
            if self.root.exists():
                shutil.rmtree(self.old, ignore_errors=True)
                os.rename(self.root, self.old)
            os.replace(self.tmp, self.root)
        except OSError:
            if not (self.root / DATALIST_NAME).is_file():
                if self.old.exists() and not self.root.exists():
                    os.rename(self.old, self.root)  # put the previous dataset back
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.old, ignore_errors=True)
