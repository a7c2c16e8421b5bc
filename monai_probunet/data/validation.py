"""Checks of every case of a dataset in the on-disk format, run before training so bad data fails at once."""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from ..bundle_utils import ConfigValueError, as_bool
from ..ct_io import DEFAULT_HU_WINDOW as CT_HU_WINDOW  # train.yaml's hu_window: under it the images must be CT
from ..ct_io import HU_PLAUSIBLE_MIN
from .disk_format import SPLITS, DatasetError, case_path, validate_datalist

__all__ = ["validate_cases"]

#: problems listed in the error; the rest are counted
MAX_LISTED = 20
#: what reading a damaged or foreign file raises (not a NIfTI, truncated gzip, bad header)
_READ_ERRORS = (ImageFileError, OSError, EOFError, ValueError, zlib.error)


def _resolve(base: Path, path: str) -> Path:
    return case_path(base, path)  # as load_datalist resolves it for the training


def _values_text(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:6])
    return shown + (f", ... ({len(values)} distinct values)" if len(values) > 6 else "")


#: an image whose values span less than this share of the intensity window it is scaled with is flat to the network
MIN_WINDOW_SHARE = 0.01


class _CaseFacts(NamedTuple):
    """What :func:`_check_case` found: the problems, and where known (else ``None``) the image's in-plane spacing,
    its shape (where usable) and its lowest value (NaN ignored)."""

    problems: list[str]
    spacing: tuple | None
    size: tuple | None
    lowest: float | None


def _flat_in_window(lo: float, hi: float, window: Sequence[float]) -> tuple[float, float] | None:
    """``(lo, hi)``, an image's lowest and highest voxel values, where they span less than :data:`MIN_WINDOW_SHARE`
    of ``window`` (after the clipping to it), else ``None``."""
    w_lo, w_hi = float(window[0]), float(window[1])
    span = min(hi, w_hi) - max(lo, w_lo)
    return (lo, hi) if span < MIN_WINDOW_SHARE * (w_hi - w_lo) else None


def _shape_text(shape: Sequence[int]) -> str:
    return " x ".join(str(int(n)) for n in shape)


def _image_shape_problem(
    image_path: Path, shape: tuple[int, ...], in_channels: int = 1, square: bool = True
) -> str | None:
    """Why an image of ``shape`` cannot be trained on, else ``None``.

    The training loads a single-channel image (``in_channels`` 1) as ``1 x H x W`` for a 2-D network: a third axis,
    even of size 1, reaches the network as a 3-D image. An image of ``in_channels`` > 1 is loaded from ``H x W x C``,
    the channel axis last (``scenes32.yaml``'s loader, as ``preprocessing.cityscapes`` writes RGB). With ``square``
    (the training rotates by 90 degrees in plane, ``train.yaml``), a non-square image turned by 90 degrees cannot be
    stacked into a batch with the others.
    """
    if in_channels > 1:
        if len(shape) != 3 or shape[2] != in_channels:
            return (
                f"image {image_path} is {_shape_text(shape)}: expected one 2-D image of {in_channels} channels per "
                f"case (in_channels), H x W x {in_channels} with the channel axis last (as preprocessing.cityscapes "
                "writes RGB)."
            )
    else:
        text = f"image {image_path} is {_shape_text(shape)}: expected one 2-D image per case (H x W)"
        if len(shape) > 2 and len(shape[2:]) == sum(1 for n in shape[2:] if n == 1):
            return f"{text}; save a 2-D slice as a 2-D NIfTI (without the axes of size 1), and its masks too."
        if len(shape) > 2:
            return f"{text}, the network is 2-D; save each slice of a volume as its own case, with 2-D masks."
        if len(shape) < 2:
            return f"{text}."
    if square and shape[0] != shape[1]:
        turned = (shape[1], shape[0], *shape[2:])
        return (
            f"image {image_path} is {_shape_text(shape)}: expected a square image (H = W), the training's random "
            f"90-degree rotations turn it to {_shape_text(turned)} and the batches cannot stack both; crop or "
            "pad it and its masks to a square."
        )
    return None


def _label_values_problem(
    values: np.ndarray, num_classes: int, ignore_index: int | None, what: str = "a grader mask"
) -> str | None:
    """Why a mask (``what``: a grader's or a mode's) holding the distinct ``values`` cannot be used (a value that is
    no class id in ``[0, num_classes)`` and not ``ignore_index``), else ``None``."""
    v = values.astype(np.float64)
    ok = (v >= 0) & (v < num_classes) & (v == np.round(v))
    if ignore_index is not None:
        ok |= v == ignore_index
    bad = values[~ok]
    if not bad.size:
        return None
    if num_classes == 2 and ignore_index is None:
        return f"holds values {_values_text(values)}; {what} must hold only 0 (background) and 1 (lesion)."
    ignored = f" and {ignore_index:g} (ignore_index: unannotated)" if ignore_index is not None else ""
    return (
        f"holds values {_values_text(values)} ({_values_text(bad)} not allowed); {what} must hold only the "
        f"class ids 0 to {num_classes - 1} (num_classes {num_classes}){ignored}."
    )


def _grid_difference(image: Any, mask: Any, spatial_dims: int) -> str | None:
    """How ``mask``'s voxel grid (its affine) differs from ``image``'s beyond float rounding, else ``None``.

    Only the first ``spatial_dims`` axes and the origin are compared (a 2-D image has no slice thickness to match).
    """
    a, b = np.asarray(image.affine, np.float64), np.asarray(mask.affine, np.float64)
    k = max(1, min(spatial_dims, 3))
    za, zb = np.linalg.norm(a[:3, :k], axis=0), np.linalg.norm(b[:3, :k], axis=0)
    tol = 1e-3 * float(za.min()) if za.min() > 0 else 1e-3  # a thousandth of a voxel
    if np.allclose(a[:3, :k], b[:3, :k], rtol=0, atol=tol) and np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=tol):
        return None
    parts = []
    if not np.allclose(za, zb, rtol=0, atol=tol):
        mm_a, mm_b = ([round(float(z), 4) for z in zooms] for zooms in (za, zb))
        parts.append(f"spacing {mm_b} mm, the image's {mm_a} mm")
    da, db = a[:3, :k] / np.where(za > 0, za, 1), b[:3, :k] / np.where(zb > 0, zb, 1)
    if not np.allclose(da, db, rtol=0, atol=1e-3):
        axes_a, axes_b = "".join(map(str, nib.aff2axcodes(a)))[:k], "".join(map(str, nib.aff2axcodes(b)))[:k]
        parts.append(f"axes {axes_b}, the image's {axes_a}" + (" (rotated)" if axes_a == axes_b else ""))
    if not np.allclose(a[:3, 3], b[:3, 3], rtol=0, atol=tol):
        parts.append(f"origin {[round(float(x), 3) for x in b[:3, 3]]} mm, the image's "
                     f"{[round(float(x), 3) for x in a[:3, 3]]} mm")
    return "; ".join(parts)


def _check_case(
    base: Path,
    split: str,
    index: int,
    item: dict[str, Any],
    window: Sequence[float] | None = None,
    num_classes: int = 2,
    ignore_index: int | None = None,
    in_channels: int = 1,
    square: bool = True,
) -> _CaseFacts:
    """Check one case: missing or unreadable files, an image that is not one 2-D image of ``in_channels`` channels
    (or not square with ``square``), an image holding NaN voxels or flat in ``window``, a mask value that is no class
    id in ``[0, num_classes)`` and not ``ignore_index``, a mask of another shape or voxel grid (affine) than its
    image's, ``modes`` and ``mode_probs`` that do not fit; the mode masks as the grader masks but for their grid.

    Only the headers are read for the shapes and grids; the data of the masks (their values) and of the image.

    Returns:
        the problems, the image's in-plane voxel spacing, its shape where usable and its lowest value (``None``
        where not known).
    """
    case = f"{split} case {item.get('case_id', index)!s}"
    problems: list[str] = []
    image_path = _resolve(base, item["image"])
    image = image_shape = spacing = size = lowest = None
    # the shape a mask must have: the image's, without its channel axis where it has several channels
    mask_shape: tuple[int, ...] | None = None
    if not image_path.is_file():
        problems.append(f"{case}: image {image_path} does not exist.")
    else:
        try:
            image = nib.load(str(image_path))
            image_shape = tuple(int(n) for n in image.shape)
            spacing = tuple(round(float(z), 4) for z in image.header.get_zooms()[:2])
            shape_problem = _image_shape_problem(image_path, image_shape, in_channels, square)
            if shape_problem is not None:
                problems.append(f"{case}: {shape_problem}")
            else:
                size = image_shape
            if in_channels == 1:
                mask_shape = image_shape
            elif shape_problem is None:
                mask_shape = image_shape[:2]
            data = np.asanyarray(image.dataobj)
            nans = int(np.count_nonzero(np.isnan(data))) if data.dtype.kind in "fc" else 0
            if nans:
                problems.append(
                    f"{case}: image {image_path} holds {nans} NaN voxel{'' if nans == 1 else 's'} (not a number): "
                    "clipping to the intensity window keeps them NaN and the training fails in its first epoch; "
                    "replace them with a value (in CT air, -1000) or leave the case out."
                )
            flat = None
            if np.any(~np.isnan(data)):  # an image of NaN only: named above, no range to compare
                lowest, highest = float(np.nanmin(data)), float(np.nanmax(data))
                flat = _flat_in_window(lowest, highest, window) if window is not None else None
            if flat is not None:
                problems.append(
                    f"{case}: image {image_path} spans [{flat[0]:g}, {flat[1]:g}], under "
                    f"{MIN_WINDOW_SHARE:.0%} of the intensity window [{window[0]:g}, {window[1]:g}] (hu_window) it is "
                    "scaled with: the network would see a flat image. Give CT in HU (not normalised), or set "
                    "--hu_window to the images' range."
                )
        except _READ_ERRORS as e:
            image = None
            problems.append(f"{case}: image {image_path} cannot be read as NIfTI ({type(e).__name__}: {e}).")
    grid = (image, image_path, image_shape, mask_shape, in_channels)
    for label in item["label"]:
        problems += _mask_problems(case, "label", _resolve(base, label), grid, num_classes, ignore_index)
    modes_problems, modes = _modes_problems(case, item)
    problems += modes_problems
    for mode in modes:
        problems += _mask_problems(case, "'modes' file", _resolve(base, mode), grid, num_classes, ignore_index)
    return _CaseFacts(problems, spacing, size, lowest)


def _mask_problems(
    case: str, kind: str, mask_path: Path, grid: tuple, num_classes: int, ignore_index: int | None
) -> list[str]:
    """Problems of one mask of a case (``kind``: ``"label"``, a grader's, or ``"'modes' file"``): missing,
    unreadable, a value that is no class id, another shape than its image's and for a grader's mask another voxel
    grid (affine) (``grid``: the image, its path, its shape, the shape a mask must have and the image's channels;
    the image ``None`` where it is unusable)."""
    image, image_path, image_shape, mask_shape, in_channels = grid
    what = "a grader mask" if kind == "label" else "a mode mask"
    if not mask_path.is_file():
        return [f"{case}: {kind} {mask_path} does not exist."]
    try:
        mask = nib.load(str(mask_path))
        array = np.asanyarray(mask.dataobj)
    except _READ_ERRORS as e:
        return [f"{case}: {kind} {mask_path} cannot be read as NIfTI ({type(e).__name__}: {e})."]
    problems = []
    values_problem = _label_values_problem(np.unique(array), num_classes, ignore_index, what)
    if values_problem is not None:
        problems.append(f"{case}: {kind} {mask_path} {values_problem}")
    if image is None or mask_shape is None:
        return problems
    if tuple(array.shape) != mask_shape:
        channels = "" if in_channels == 1 else f", without its {in_channels} channels"
        problems.append(
            f"{case}: {kind} {mask_path} is {_shape_text(array.shape)}, its image {image_path} is "
            f"{_shape_text(image_shape)}: {what} must have its image's shape (and number of axes{channels})."
        )
        return problems
    difference = _grid_difference(image, mask, len(mask_shape)) if kind == "label" else None
    if difference is not None:
        problems.append(
            f"{case}: {kind} {mask_path} lies on another voxel grid than its image {image_path} (affine: "
            f"{difference}): {what} must share its image's affine; resample it onto the image, or if its voxels "
            "already match the image's, save it with the image's affine."
        )
    return problems


#: how far the ``mode_probs`` of a case may sum from 1 (the known-mixture GED's tolerance)
MODE_PROBS_TOLERANCE = 1e-6


def _modes_problems(case: str, item: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Problems of a case's optional ``modes`` (the known modes' mask files) and ``mode_probs`` (their
    probabilities: the true distribution the oracle draws from), and the mode files to check (none where the two
    keys do not fit together)."""
    has_modes, has_probs = "modes" in item, "mode_probs" in item
    if not has_modes and not has_probs:
        return [], []
    if has_modes != has_probs:
        given, missing = ("modes", "mode_probs") if has_modes else ("mode_probs", "modes")
        return [(f"{case}: {given!r} without {missing!r}: give both (the known modes' mask files and their "
                 "probabilities) or neither.")], []
    modes, probs = item["modes"], item["mode_probs"]
    if not isinstance(modes, list) or not modes or not all(isinstance(m, str) for m in modes):
        return [f"{case}: 'modes' must be a non-empty list of mask paths, got {json.dumps(modes)[:80]}."], []
    numbers = isinstance(probs, list) and all(
        isinstance(p, (int, float)) and not isinstance(p, bool) and np.isfinite(p) for p in probs
    )
    if not numbers or any(p < 0 for p in probs):
        return [(f"{case}: 'mode_probs' must be a list of probabilities (numbers >= 0), one per 'modes' file, got "
                 f"{json.dumps(probs)[:80]}.")], modes
    if len(probs) != len(modes):
        return [(f"{case}: 'mode_probs' holds {len(probs)} values for {len(modes)} 'modes' files: one probability "
                 "per mode.")], modes
    total = float(sum(probs))
    if abs(total - 1.0) > MODE_PROBS_TOLERANCE:
        return [(f"{case}: 'mode_probs' sum to {total:g}, not 1: they are the probabilities of the known modes (the "
                 "true distribution the oracle draws from).")], modes
    return [], modes


def _patient_problems(cases: list[tuple[str, int, dict[str, Any]]]) -> list[str]:
    """Cases without a ``patient_id``, and patients whose cases lie in more than one split."""
    problems, where = [], {}
    for split, i, item in cases:
        patient = item.get("patient_id")
        if not isinstance(patient, str) or not patient.strip():
            problems.append(f"{split} case {item.get('case_id', i)!s}: no patient_id (a non-empty string); the "
                            "splits must be by patient, and only a patient_id shows that they are.")
            continue
        where.setdefault(patient, {}).setdefault(split, str(item.get("case_id", i)))
    for patient, found in _in_several_splits(where):
        problems.append(f"patient {patient!r} has cases in {found}: a patient's images must all be in one split "
                        "(images of one patient in training and test score the model on what it has seen).")
    return problems


def _in_several_splits(where: dict[str, dict[str, str]]) -> list[tuple[str, str]]:
    """``(key, "training (case c1), test (case c7)")`` for each key of ``{key: {split: case}}`` in several splits."""
    return [(key, ", ".join(f"{s} (case {c})" for s, c in splits.items()))
            for key, splits in where.items() if len(splits) > 1]


def _shared_image_problems(base: Path, cases: list[tuple[str, int, dict[str, Any]]]) -> list[str]:
    """Image files listed in more than one split (by their real path: also under another spelling, a link, or
    another ``patient_id``)."""
    where: dict[str, dict[str, str]] = {}
    shown: dict[str, Path] = {}
    for split, i, item in cases:
        image = _resolve(base, item["image"])
        key = os.path.realpath(image)
        shown.setdefault(key, image)
        where.setdefault(key, {}).setdefault(split, str(item.get("case_id", i)))
    return [f"image {shown[key]} is listed in {found}: an image must be in one split only (the same image in "
            "training and test scores the model on what it has seen)." for key, found in _in_several_splits(where)]


def _grader_count_problems(cases: list[tuple[str, int, dict[str, Any]]]) -> list[str]:
    """Cases whose number of grader masks differs from the others': one line per case off the number most cases
    have, or where no number is in most cases (a tie), one line for the dataset; both name the numbers found."""
    counts = Counter(len(item["label"]) for _, _, item in cases)
    if len(counts) < 2:
        return []
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    found = ", ".join(f"{n} grader{'' if n == 1 else 's'} in {k} case{'' if k == 1 else 's'}" if j == 0 else
                      f"{n} in {k}" for j, (n, k) in enumerate(ranked))
    rule = "every case needs the same number of graders (an absent grader is an empty mask)."
    (usual, most), (_, second) = ranked[0], ranked[1]
    if most > second:
        return [
            f"{split} case {item.get('case_id', i)!s}: {len(item['label'])} grader mask"
            f"{'' if len(item['label']) == 1 else 's'}, most cases have {usual} ({found}); {rule}"
            for split, i, item in cases if len(item["label"]) != usual
        ]
    first = {}
    for split, i, item in cases:
        first.setdefault(len(item["label"]), f"{split} case {item.get('case_id', i)!s}")
    examples = ", ".join(first[n] for n, _ in ranked)
    return [(f"cases differ in their number of grader masks, with no number in most of them: {found} (the first of "
             f"each: {examples}); {rule}")]


def _uncommon(
    cases: list[tuple[str, int, dict[str, Any]]], values: list[tuple | None], line: Callable[..., str]
) -> list[str]:
    """``line(case, item, value, usual)`` for every case whose value is not the most common one (``None``: not
    known, skipped); nothing when all known values agree."""
    counts = Counter(v for v in values if v is not None)
    if len(counts) < 2:
        return []
    usual = counts.most_common(1)[0][0]
    return [
        line(f"{split} case {item.get('case_id', i)!s}", item, v, usual)
        for (split, i, item), v in zip(cases, values) if v is not None and v != usual
    ]


def _spacing_problems(cases: list[tuple[str, int, dict[str, Any]]], spacings: list[tuple | None]) -> list[str]:
    """Images whose in-plane spacing is not the most common one (the network learns in pixels)."""
    return _uncommon(cases, spacings, lambda case, item, s, usual: (
        f"{case}: image spacing {list(s)} mm, most images {list(usual)} mm; resample every image (and its masks) to "
        "one spacing: the network learns in pixels."))


def _size_problems(
    base: Path, cases: list[tuple[str, int, dict[str, Any]]], sizes: list[tuple | None]
) -> list[str]:
    """Images whose size is not the most common one (the batches stack them; no crop is taken by default)."""
    return _uncommon(cases, sizes, lambda case, item, s, usual: (
        f"{case}: image {_resolve(base, item['image'])} is {_shape_text(s)}, most images are {_shape_text(usual)}; "
        "every image must have one size (the training stacks them into batches): crop or pad it and its masks to "
        "that size."))


def _is_ct_window(window: Sequence[float] | None) -> bool:
    """Whether ``window`` is :data:`CT_HU_WINDOW` (``train.yaml``'s default ``hu_window``)."""
    try:
        return window is not None and tuple(float(v) for v in window) == CT_HU_WINDOW
    except (TypeError, ValueError):
        return False


def _hu_problems(base: Path, cases: list[tuple[str, int, dict[str, Any]]], lowest: list[float | None]) -> list[str]:
    """One line where no image has a value at or below :data:`~monai_probunet.ct_io.HU_PLAUSIBLE_MIN` (no air, lung
    or fat anywhere: MR, CT without its rescale intercept, normalised images), naming the image of the lowest value;
    nothing where one has (a chest CT's lesion-centred crops hold lung, even if some lie wholly in soft tissue) or no
    image could be read."""
    known = [(low, c) for low, c in zip(lowest, cases) if low is not None]
    if not known or min(low for low, _ in known) <= HU_PLAUSIBLE_MIN:
        return []
    low, (split, i, item) = min(known, key=lambda k: k[0])
    window = f"[{CT_HU_WINDOW[0]:g}, {CT_HU_WINDOW[1]:g}]"
    line = (
        f"images not plausibly CT in Hounsfield units: no image has a value at or below {HU_PLAUSIBLE_MIN:g} (air, "
        f"lung or fat), the lowest is {low:g} in {split} case {item.get('case_id', i)!s}'s image "
        f"{_resolve(base, item['image'])}; the intensity window {window} (hu_window) is CT's: to train on another "
        'modality, set --hu_window "[low, high]" to its intensity range.'
    )
    return [line]


def validate_cases(
    datalist: str | Path,
    splits: Iterable[str] = SPLITS,
    num_threads: int = 4,
    intensity_window: Sequence[float] | None = None,
    num_classes: int = 2,
    ignore_index: int | None = None,
    in_channels: int = 1,
    square_images: bool = True,
) -> dict[str, Any]:
    """Check every case of a dataset before it is used, and report every problem at once.

    The defaults are ``train.yaml``'s binary CT task; a run checks its data against its own config (``num_classes``,
    ``ignore_index``, ``in_channels``, ``square_images``: ``scenes32.yaml`` for Cityscapes converted by
    ``python -m preprocessing.cityscapes``). For each case of ``splits``: the image and every grader mask exist and are
    readable NIfTI; the image is one 2-D image, ``H x W`` with ``in_channels`` 1 (no volume, no trailing axis of size
    1), ``H x W x C`` (the channel axis last) with ``in_channels`` C > 1, and square (``H = W``) with ``square_images``;
    each mask holds only class ids in ``[0, num_classes)`` and ``ignore_index`` (the defaults: 0 and 1; a 0/255 or 0/0.5
    mask, a label map with class 2, a -1 are refused, not guessed); each mask has its image's shape (without the channel
    axis) and voxel grid (affine: spacing, axes and origin, to a thousandth of a voxel; a mirrored mask is refused); a
    case's optional ``modes`` (the mask files of the known modes, for the oracle) and ``mode_probs`` (their
    probabilities) come together, one number >= 0 per mode, summing to 1, and each mode file is checked as a grader mask
    is (exists, its values and shape); every case has the same number of grader masks and a ``patient_id``, no patient
    and no image file has cases in two splits, and every image has the same size and in-plane voxel spacing (the
    training stacks the images into batches); no image holds a NaN voxel (it stays NaN through the clipping to the
    intensity window and makes the loss NaN; an infinite value is clipped like any other). With ``intensity_window``
    (the ``[low, high]`` the training scales images from, ``hu_window``), no image may span less than
    :data:`MIN_WINDOW_SHARE` of it (CT normalised to [0, 1] under an HU window would be one flat value).

    With the CT window :data:`CT_HU_WINDOW` (``train.yaml``'s default ``hu_window``) the images must be plausibly CT
    in Hounsfield units, by the rule of the inference's check (``ct_io``): at least one image of the dataset has a
    value at or below :data:`~monai_probunet.ct_io.HU_PLAUSIBLE_MIN` (-200 HU: air, lung or fat). A chest CT's
    lesion-centred crops hold lung, so a chest-CT dataset passes even where some of its crops lie wholly in soft
    tissue; MR (values from about 0 up), CT stored without its rescale intercept (from 0 up) and images normalised to
    [0, 1] or to zero mean fail. With another window (another modality's intensity range, ``--hu_window``) this is
    not checked.

    Args:
        datalist: the dataset's ``datalist.json`` (paths in it relative to its folder, or absolute).
        splits: the splits to check (those absent from the file are skipped).
        num_threads: threads reading the files (NIfTI decompression releases the GIL).
        intensity_window: ``[low, high]`` the images are scaled from in training (:data:`CT_HU_WINDOW`: also
            checked for CT in HU); ``None``: not checked.
        num_classes: the network's classes; a mask value must be a class id in ``[0, num_classes)`` or
            ``ignore_index``.
        ignore_index: the label of unannotated pixels (``None``: none).
        in_channels: the channels of every image (1: ``H x W``; more: ``H x W x in_channels``).
        square_images: whether every image must be square (the training rotates by 90 degrees); a boolean or its
            command-line spelling (``true``/``false``).

    Returns:
        the datalist content (as :func:`~monai_probunet.data.disk_format.validate_datalist`).

    Raises:
        DatasetError: one line per problem (case, file, what was found and expected), at most
            :data:`MAX_LISTED` listed and the rest counted.
        ConfigValueError (a ``ValueError``): ``num_classes`` or ``in_channels`` not a whole number >= 1,
            ``ignore_index`` not a whole number or ``None``, ``square_images`` not a boolean.
    """
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels), ("ignore_index", ignore_index)):
        whole = not isinstance(value, bool) and isinstance(value, (int, np.integer))
        if key == "ignore_index" and not (value is None or whole):
            raise ConfigValueError(f"--ignore_index: expected a whole number or null, got {value!r}.")
        if key != "ignore_index" and not (whole and value >= 1):
            raise ConfigValueError(f"--{key}: expected a whole number >= 1, got {value!r}.")
    square_images = as_bool(square_images, "square_images")
    path = Path(datalist)
    content = validate_datalist(path)
    cases = [(split, i, item) for split in splits for i, item in enumerate(content.get(split, []))]
    rules = (intensity_window, num_classes, ignore_index, in_channels, square_images)
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        per_case = list(pool.map(lambda c: _check_case(path.parent, *c, *rules), cases))
    problems = [p for facts in per_case for p in facts.problems]
    problems += _patient_problems(cases) + _shared_image_problems(path.parent, cases)
    problems += _spacing_problems(cases, [facts.spacing for facts in per_case])
    problems += _size_problems(path.parent, cases, [facts.size for facts in per_case])
    if _is_ct_window(intensity_window):
        problems += _hu_problems(path.parent, cases, [facts.lowest for facts in per_case])
    problems += _grader_count_problems(cases)
    if problems:
        listed = problems[:MAX_LISTED]
        more = f"\n  ... and {len(problems) - MAX_LISTED} more problems" if len(problems) > MAX_LISTED else ""
        raise DatasetError(
            f"{path}: {len(problems)} problem(s) in the dataset, nothing was trained:\n  " + "\n  ".join(listed) + more
        )
    return content
