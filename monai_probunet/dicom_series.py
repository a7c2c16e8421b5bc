"""DICOM header checks before a CT slice or series is read: :func:`check_ct_dicom`.

MONAI's ``PydicomReader`` stacks a series folder in ``InstanceNumber`` order (it skips a slice without one) and
takes the slice spacing from the first and last slice; 3D Slicer and ITK stack by position along the slice normal.
So a folder is read only when the result is the volume a viewer shows: one CT series, every slice with its position,
orientation, pixel spacing and ``InstanceNumber``, numbered in position order (either way; :func:`check_ct_dicom`
says which, and :func:`~monai_probunet.ct_io.load_ct` flips a series numbered against the normal so that slice
``k`` is the viewer's), and equal gaps (a missing slice would otherwise be spread over the others as a wrong
spacing). Everything else is refused with one line naming the file and what was expected.

The headers are read once (:func:`read_headers`, up to the pixel data): a caller that holds them (the inference CLI,
which also needs them for the DICOM SEG) passes them to :func:`check_ct_dicom` and :func:`hu_shift_missing`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DICOMDIR_FREE", "SLICE_GAP_TOLERANCE", "check_ct_dicom", "hu_shift_missing", "is_dicom", "read_headers",
    "series_files", "slice_position",
]

#: a slice gap that differs from the series' median gap by more than this share of it is refused
SLICE_GAP_TOLERANCE = 0.01
#: the name DICOM media give their directory file (PS3.10: ``DICOMDIR``), a DICOM file that is not an image
DICOMDIR = "DICOMDIR"
#: MONAI ``PydicomReader``'s ``fname_regex`` for a series folder: every file but a ``DICOMDIR`` (which it would
#: otherwise read as a slice; files that are not DICOM it skips itself)
DICOMDIR_FREE = rf".*(?<![/\\]{DICOMDIR})$"


def is_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM file (``.dcm``, or the ``DICM`` preamble of a file without that suffix)."""
    from pydicom.misc import is_dicom as _has_preamble

    try:
        return path.suffix.lower() == ".dcm" or _has_preamble(str(path))
    except OSError:
        return False


def series_files(folder: Path) -> list[Path]:
    """The DICOM files of a series folder (:func:`is_dicom`), in name order, without a CD's or USB stick's
    ``DICOMDIR`` (an index of the media, not an instance of the series)."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != DICOMDIR and is_dicom(p))


@dataclass(frozen=True)
class _Slice:
    name: str
    series: str
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    position: float | None  # along the slice normal, mm
    instance: int | None  # InstanceNumber


def slice_position(ds) -> tuple[np.ndarray, float] | None:
    """A DICOM slice's orientation (``ImageOrientationPatient``) and position along its normal in mm, or ``None``
    if either tag is missing or not 3 + 6 finite numbers."""
    try:
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,) or not (np.isfinite(ipp).all() and np.isfinite(iop).all()):
        return None
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm <= 1e-6:
        return None
    return iop, float(ipp @ (normal / norm))


def read_headers(files: Sequence[Path], source: str) -> list[Any]:
    """Each file's header, read up to its pixel data (pydicom's ``stop_before_pixels``).

    Args:
        files: DICOM files (one slice, or a series folder's :func:`series_files`).
        source: The image's name for the messages.

    Returns:
        list of pydicom.Dataset: the headers, in ``files`` order.

    Raises:
        ValueError: One line naming a file pydicom cannot read.
    """
    import pydicom

    headers = []
    for f in files:
        f = Path(f)
        try:
            headers.append(pydicom.dcmread(str(f), stop_before_pixels=True))
        except Exception as e:  # pydicom raises many types for a broken file
            where = source if source == str(f) else f"{source}: {f.name}"
            raise ValueError(f"{where} is not a readable DICOM file ({type(e).__name__}: {e}).") from e
    return headers


def _slice_of(f: Path, ds: Any, source: str) -> _Slice:
    """File ``f``'s header ``ds``, refused unless it is a CT slice with a positive ``PixelSpacing``."""
    where = source if source == str(f) else f"{source}: {f.name}"
    modality = getattr(ds, "Modality", None)
    if modality != "CT":
        raise ValueError(f"{source}: DICOM file {f.name} has Modality {modality!r}; this model segments CT (HU) only.")
    spacing = getattr(ds, "PixelSpacing", None)
    try:
        ok = spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: PixelSpacing {None if spacing is None else list(spacing)!r} is missing or not positive; "
            "the pixel size in mm is needed to resample to the model's spacing."
        )
    pos = slice_position(ds)
    try:
        instance = int(ds.InstanceNumber)
    except (AttributeError, TypeError, ValueError):
        instance = None
    return _Slice(
        f.name, str(getattr(ds, "SeriesInstanceUID", "")), None if pos is None else pos[0],
        None if pos is None else pos[1], instance,
    )


def _check_one_series(slices: Sequence[_Slice], source: str) -> None:
    counts = Counter(s.series for s in slices)
    if len(counts) > 1:
        listed = ", ".join(f"{uid or '(no SeriesInstanceUID)'}: {n} files" for uid, n in counts.most_common(3))
        more = f" and {len(counts) - 3} more" if len(counts) > 3 else ""
        raise ValueError(f"{source}: the folder holds {len(counts)} DICOM series ({listed}{more}); keep one series "
                         "per folder.")
    for s in slices:
        if s.position is None:
            raise ValueError(f"{source}: {s.name} has no usable ImagePositionPatient / ImageOrientationPatient; a "
                             "series needs every slice's position to stack its slices.")
        if s.instance is None:
            raise ValueError(f"{source}: {s.name} has no InstanceNumber; the DICOM reader orders a series by it.")
    first = slices[0]
    for s in slices[1:]:
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise ValueError(f"{source}: {first.name} and {s.name} have different ImageOrientationPatient; keep the "
                             "slices of one orientation per folder.")


def _check_duplicates(by_position: Sequence[_Slice], source: str) -> None:
    """Refuse two slices at one position (the same slice twice): stacked, they give a wrong slice spacing."""
    groups: list[list[_Slice]] = []
    for s in by_position:
        if groups and abs(s.position - groups[-1][0].position) <= 1e-3:
            groups[-1].append(s)
        else:
            groups.append([s])
    dups = [g for g in groups if len(g) > 1]
    if not dups:
        return
    names = sorted(s.name for s in dups[0])
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} files)" if len(names) > 5 else "")
    more = f"; {len(dups) - 1} more positions hold more than one slice" if len(dups) > 1 else ""
    raise ValueError(
        f"{source}: {len(names)} slices at the same position z = {dups[0][0].position:g} mm along the slice normal "
        f"({shown}){more}: remove the duplicates."
    )


def _check_numbering(slices: Sequence[_Slice], source: str) -> bool:
    """Refuse an ``InstanceNumber`` order that is not the position order; ``True`` if it runs against the normal."""
    numbers = Counter(s.instance for s in slices)
    twice = [n for n, c in numbers.items() if c > 1]
    if twice:
        names = sorted(s.name for s in slices if s.instance == twice[0])
        raise ValueError(f"{source}: {', '.join(names[:3])} share InstanceNumber {twice[0]}; the DICOM reader orders "
                         "a series by it: renumber the slices in position order.")
    by_number = sorted(slices, key=lambda s: s.instance)
    steps = np.diff([s.position for s in by_number])
    descending = bool(steps[0] < 0)
    wrong = np.flatnonzero(steps > 0 if descending else steps < 0)
    if wrong.size:
        a, b = by_number[wrong[0]], by_number[wrong[0] + 1]
        raise ValueError(
            f"{source}: InstanceNumber does not follow the slice positions ({a.name} is #{a.instance} at "
            f"{a.position:g} mm, {b.name} #{b.instance} at {b.position:g} mm along the normal); the DICOM reader "
            "stacks a series by InstanceNumber, so it would be scrambled: renumber the slices in position order."
        )
    return descending


def _check_gaps(by_position: Sequence[_Slice], source: str, tolerance: float) -> None:
    gaps = np.diff([s.position for s in by_position])
    med = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - med) > tolerance * med)
    if bad.size:
        k = int(bad[0])
        more = f" ({bad.size} gaps differ)" if bad.size > 1 else ""
        raise ValueError(
            f"{source}: slice gaps are not uniform: {gaps[k]:.3g} mm between {by_position[k].name} and "
            f"{by_position[k + 1].name}, {med:.3g} mm (the median) elsewhere{more}; a slice is missing or the series "
            "mixes spacings: export the complete series, or pass one slice's file for a 2-D result."
        )


def _check_axial_slice(s: _Slice, source: str) -> None:
    """One slice needs its position and orientation (its pixel grid in the patient) and must be axial: the model
    answers axial slices, and a coronal or sagittal slice holds no axial plane to answer on (a series does)."""
    if s.position is None:
        raise ValueError(f"{source}: no usable ImagePositionPatient / ImageOrientationPatient; the slice's position "
                         "and orientation in the patient are needed to place the click and the outlines.")
    normal = np.abs(np.cross(s.orientation[:3], s.orientation[3:]))
    if int(np.argmax(normal)) != 2:
        plane = "sagittal" if int(np.argmax(normal)) == 0 else "coronal"
        raise ValueError(f"{source}: a {plane} slice (ImageOrientationPatient {np.round(s.orientation, 3).tolist()});"
                         " the model answers axial slices: give an axial slice, or the whole series as a folder.")


def hu_shift_missing(path: Path, header: Any = None) -> bool:
    """Whether a DICOM file's pixels were stored without a negative ``RescaleIntercept``: then only a signed
    storage that holds air at about -1000 is HU, and :func:`~monai_probunet.ct_io.load_ct` checks the values.
    ``header``: the file's header if read already (:func:`read_headers`)."""
    import pydicom

    try:
        ds = header if header is not None else pydicom.dcmread(str(path), stop_before_pixels=True)
        return not float(ds.RescaleIntercept) < 0
    except (AttributeError, TypeError, ValueError, OSError):
        return True


def check_ct_dicom(
    files: Sequence[Path], source: str, tolerance: float = SLICE_GAP_TOLERANCE, headers: Sequence[Any] | None = None
) -> bool:
    """Check the DICOM headers of one slice or one series before it is read (no pixel data is read).

    Args:
        files: The DICOM files of one slice, or of one series (a folder's DICOM files).
        source: The image's name for the messages.
        tolerance: The largest relative difference of a slice gap from the median gap.
        headers: The files' headers where the caller has read them (:func:`read_headers`, in ``files`` order);
            ``None``: read here.

    Returns:
        bool: ``True`` if the series is numbered against its slice normal (the reader's slice 0 is the last one
        along the normal), ``False`` otherwise (and for one slice).

    Raises:
        ValueError: One line naming the file or the folder: a file unreadable, not ``Modality == "CT"`` or
            without a positive ``PixelSpacing``; one slice without position or orientation, or not axial; for a
            series: more than one ``SeriesInstanceUID``, a slice without position, orientation or
            ``InstanceNumber``, slices of different orientations, two slices at one position, an
            ``InstanceNumber`` used twice or out of position order, unequal slice gaps.
    """
    if headers is None or len(headers) != len(files):
        headers = read_headers(files, source)
    slices = [_slice_of(Path(f), ds, source) for f, ds in zip(files, headers)]
    if len(slices) < 2:
        _check_axial_slice(slices[0], source)
        return False
    _check_one_series(slices, source)
    by_position = sorted(slices, key=lambda s: s.position)
    _check_duplicates(by_position, source)
    descending = _check_numbering(slices, source)
    _check_gaps(by_position, source, tolerance)
    return descending
