"""Reading LIDC-IDRI's DICOM series: header checks, the SliceLocation filter, series lookup and HU volumes.

Axis conventions (checked by ``tests/test_lidc.py``): pylidc indexes a scan as ``(row, col, slice)`` with slices
sorted by increasing ``ImagePositionPatient`` z. MONAI's ``PydicomReader`` returns ``pixel_array.T``, i.e.
``(x = col, y = row)``, with an LPS->RAS affine (which changes the affine only, never the voxels). Volumes here are
MONAI-ordered ``(C, X, Y, K)``; the written 2-D crops are ``(row, col)`` like pylidc's planes and ``pixel_array``.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from .lidc_settings import LIDCSettings

if TYPE_CHECKING:  # torch and MONAI are imported where pixels are read: indexing a DICOM root needs neither
    from monai.data import MetaTensor, PydicomReader
    from monai.transforms import LoadImage
    from pylidc import Scan

__all__ = [
    "Z_MATCH_TOL",
    "DicomSeriesError",
    "SeriesFiles",
    "find_series_dir",
    "index_series",
    "match_z",
    "read_ct_series",
    "read_dicom_header",
    "select_series_files",
    "slice_location_filter",
    "volume_affine",
]

#: tolerance (mm) when matching pylidc's slice z values to ImagePositionPatient z and when de-duplicating slices
Z_MATCH_TOL = 0.01


_REQUIRED_TAGS = (
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
)


class DicomSeriesError(ValueError):
    """A DICOM file or series that is not the expected complete CT series; the message names the file or scan."""


def read_dicom_header(path: str | Path) -> pydicom.Dataset:
    """Read one DICOM header (no pixel data) and check it is a complete CT image header.

    Args:
        path: a ``.dcm`` file.

    Returns:
        the pydicom dataset without pixel data.

    Raises:
        DicomSeriesError: unreadable / truncated / corrupt file, missing geometry tags, or a modality other than CT;
            the message names the file and what was expected.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # InvalidDicomError, EOFError, struct errors ... all mean "not a readable DICOM file"
        raise DicomSeriesError(
            f"{path}: cannot be read as DICOM ({type(e).__name__}: {e}); expected a DICOM CT image file."
        ) from e
    missing = [tag for tag in _REQUIRED_TAGS if tag not in ds]
    if missing:
        raise DicomSeriesError(
            f"{path}: missing DICOM tags {missing}; expected a complete DICOM CT image (the file may be truncated "
            f"or corrupt)."
        )
    if str(ds.Modality).upper() != "CT":
        raise DicomSeriesError(f"{path}: Modality is {str(ds.Modality)!r}, expected 'CT' (LIDC scans are CT series).")
    return ds


def slice_location_filter(
    files: Sequence[str | Path],
    headers: dict[Path, pydicom.Dataset] | None = None,
    tolerance: float = 1e-3,
) -> tuple[list[Path], list[Path]]:
    """The paper's filter: drop each file whose ``|SliceLocation|`` differs from ``|ImagePositionPatient[2]|``.

    Args:
        files: DICOM files.
        headers: already read headers by path (read with :func:`read_dicom_header` where missing).
        tolerance: allowed difference in mm.

    Returns:
        ``(kept, dropped)`` paths, each in input order. A file without ``SliceLocation`` is kept.
    """
    kept: list[Path] = []
    dropped: list[Path] = []
    for f in map(Path, files):
        ds = headers[f] if headers is not None and f in headers else read_dicom_header(f)
        location = ds.get("SliceLocation", None)
        if location is None or location == "":
            kept.append(f)
            continue
        z = float(ds.ImagePositionPatient[2])
        (kept if abs(abs(float(location)) - abs(z)) <= tolerance else dropped).append(f)
    return kept, dropped


def volume_affine(img: MetaTensor) -> np.ndarray:
    """The 4 x 4 affine of a MetaTensor as float64 numpy."""
    import torch

    return torch.as_tensor(img.affine).detach().cpu().numpy().astype(np.float64)


@functools.lru_cache(maxsize=1)
def _dicom_loader() -> tuple[LoadImage, PydicomReader]:
    """One MONAI loader per process; the reader is passed at call time so that no other reader is tried."""
    from monai.data import PydicomReader
    from monai.transforms import LoadImage

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the optional GPU DICOM reader warns when nvImageCodec is absent
        return LoadImage(image_only=True, dtype=np.float32), PydicomReader()


def read_ct_series(files: Sequence[str | Path]) -> MetaTensor:
    """Read CT slices with MONAI (``LoadImage`` + ``PydicomReader``) in HU and stack them by increasing z.

    Each file is read by its own ``LoadImage`` call rather than handing MONAI the folder, because (a) MONAI stacks a
    folder by ``InstanceNumber``, not by position, (b) a folder read cannot leave out the files the SliceLocation
    filter dropped or read only the slices needed, and (c) a per-file call lets an error name the broken file.
    The stacking itself (and the z column of the affine) is therefore written by hand here.

    Args:
        files: DICOM files of one axial series (any order; z positions must be distinct).

    Returns:
        MetaTensor of shape ``(X, Y, K)`` = ``(columns, rows, slices)``, float32 HU (rescale slope/intercept
        applied), with MONAI's RAS affine of the first slice (z column = median slice step) and ``meta["slice_z"]``
        (ImagePositionPatient z of each slice, increasing) and ``meta["filenames"]``.

    Raises:
        DicomSeriesError: a file is unreadable, truncated, not CT, or the slices do not form one axial series.
    """
    import torch
    from monai.data import MetaTensor

    if not files:
        raise DicomSeriesError("no DICOM files to read (expected >= 1 CT slice).")
    headers = {Path(f): read_dicom_header(f) for f in files}
    order = sorted(headers, key=lambda f: float(headers[f].ImagePositionPatient[2]))
    zs = [float(headers[f].ImagePositionPatient[2]) for f in order]
    if len(zs) > 1 and np.min(np.diff(zs)) < Z_MATCH_TOL:
        i = int(np.argmin(np.diff(zs)))
        raise DicomSeriesError(
            f"{order[i]} and {order[i + 1]} have the same z position {zs[i]}; expected one slice per z."
        )
    loader, reader = _dicom_loader()
    slices = []
    for f in order:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = loader(str(f), reader=reader)
        except Exception as e:
            raise DicomSeriesError(
                f"{f}: cannot read the pixel data ({type(e).__name__}: {e}); expected a complete DICOM CT image "
                f"(the file may be truncated or corrupt)."
            ) from e
        if img.ndim != 2:
            raise DicomSeriesError(f"{f}: pixel data of shape {tuple(img.shape)}, expected one 2-D axial slice.")
        if slices and img.shape != slices[0].shape:
            raise DicomSeriesError(
                f"{f}: slice of shape {tuple(img.shape)}, expected {tuple(slices[0].shape)} like {order[0]}."
            )
        slices.append(img)
    affine = volume_affine(slices[0])
    normal = np.cross(affine[:3, 0], affine[:3, 1])
    if abs(normal[2]) < 0.99 * np.linalg.norm(normal):
        raise DicomSeriesError(
            f"{order[0]}: ImageOrientationPatient {list(headers[order[0]].ImageOrientationPatient)} is not axial; "
            f"expected an axial CT series like all LIDC scans."
        )
    affine[:3, 2] = [0.0, 0.0, float(np.median(np.diff(zs))) if len(zs) > 1 else 1.0]
    data = torch.stack([s.as_tensor().float() for s in slices], dim=-1)
    meta = {"slice_z": zs, "filenames": [str(f) for f in order], "space": "RAS"}
    return MetaTensor(data, affine=torch.as_tensor(affine), meta=meta)


def find_series_dir(dicom_root: str | Path, scan: Scan) -> Path:
    """Locate the folder holding a scan's DICOM files.

    Written by hand because pylidc's own lookup (``Scan.get_path_to_dicom_files``) only reads its root from
    ``~/.pylidcrc``; the search order is the same: ``<root>/<PatientID>/<StudyUID>/<SeriesUID>`` first, then any
    folder under ``<root>/<PatientID>`` whose first ``.dcm`` file carries the scan's Study/Series UIDs. ``<root>``
    may also be the folder above ``LIDC-IDRI`` (as NBIA downloads it).

    Raises:
        FileNotFoundError: no such folder; the message names the scan, the folder searched and the expected layout.
    """
    root = Path(dicom_root)
    bases = [root / scan.patient_id, root / "LIDC-IDRI" / scan.patient_id]
    base = next((b for b in bases if b.is_dir()), None)
    expected = (
        f"expected <root>/<PatientID>/<StudyUID>/<SeriesUID>/*.dcm or any folder under <root>/<PatientID> with .dcm "
        f"files of StudyInstanceUID {scan.study_instance_uid} and SeriesInstanceUID {scan.series_instance_uid}"
    )
    if base is None:
        raise FileNotFoundError(f"scan {scan.id} ({scan.patient_id}): no folder {bases[0]}; {expected}.")
    direct = base / scan.study_instance_uid / scan.series_instance_uid
    if direct.is_dir():
        return direct
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        dcm = sorted(f for f in filenames if f.lower().endswith(".dcm") and not f.startswith("."))
        for name in dcm[:1]:
            try:
                ds = pydicom.dcmread(Path(dirpath) / name, stop_before_pixels=True)
            except Exception:  # an unreadable file here is reported when the matching folder is read, if it matches
                continue
            if (
                str(ds.get("SeriesInstanceUID", "")).strip() == scan.series_instance_uid
                and str(ds.get("StudyInstanceUID", "")).strip() == scan.study_instance_uid
            ):
                return Path(dirpath)
    raise FileNotFoundError(f"scan {scan.id} ({scan.patient_id}): no folder under {base} holds its series; {expected}.")


def match_z(targets: Iterable[float], available: np.ndarray) -> dict[float, int]:
    """``{z: index into available}`` for each target z found within :data:`Z_MATCH_TOL`."""
    found = {}
    for z in targets:
        if len(available):
            i = int(np.argmin(np.abs(available - z)))
            if abs(available[i] - z) <= Z_MATCH_TOL:
                found[z] = i
    return found


@dataclass
class SeriesFiles:
    """The usable DICOM files of one scan: one per z position, by increasing z."""

    directory: Path
    files: list[Path]
    z: np.ndarray  # (N,) ImagePositionPatient z of ``files``
    dropped_z: np.ndarray  # z of the files the SliceLocation filter dropped
    plane_shape: tuple[int, int]  # (rows, cols)
    stats: dict[str, int]
    dropped_files: list[str]


def select_series_files(
    scan: Scan, dicom_root: str | Path, settings: LIDCSettings, directory: str | Path | None = None
) -> SeriesFiles:
    """Find a scan's folder, check every header, keep its series, apply the SliceLocation filter, de-duplicate z.

    ``directory``: the scan's folder when already known (:func:`index_series`), else :func:`find_series_dir`.

    Several files at one z (rare): the smaller ``InstanceNumber`` is kept, as pylidc's ``load_all_dicom_images``.

    Raises:
        FileNotFoundError: no folder, or no file of the scan's series in it.
        DicomSeriesError: a file is unreadable / truncated in its header / not CT (the message names it).
    """
    directory = Path(directory) if directory is not None else find_series_dir(dicom_root, scan)
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".dcm" and not p.name.startswith("."))
    stats = dict(files=0, files_other_series=0, files_dropped_slice_location=0, files_dropped_duplicate_z=0)
    headers: dict[Path, pydicom.Dataset] = {}
    for f in paths:
        ds = read_dicom_header(f)
        if str(ds.SeriesInstanceUID).strip() == scan.series_instance_uid:
            headers[f] = ds
        else:
            stats["files_other_series"] += 1
    if not headers:
        raise FileNotFoundError(
            f"scan {scan.id} ({scan.patient_id}): {directory} holds no .dcm file of SeriesInstanceUID "
            f"{scan.series_instance_uid}; expected the scan's CT slices there."
        )
    stats["files"] = len(headers)
    kept, dropped = list(headers), []
    if settings.slice_location_filter:
        kept, dropped = slice_location_filter(kept, headers, settings.tolerance_mm)
    stats["files_dropped_slice_location"] = len(dropped)

    def z_of(f: Path) -> float:
        return float(headers[f].ImagePositionPatient[2])

    by_z: dict[float, Path] = {}
    for f in sorted(kept, key=lambda f: (z_of(f), int(headers[f].get("InstanceNumber", 0) or 0))):
        if by_z and abs(z_of(f) - next(reversed(by_z))) < Z_MATCH_TOL:
            stats["files_dropped_duplicate_z"] += 1
            continue
        by_z[z_of(f)] = f
    first = headers[paths[0]] if paths[0] in headers else next(iter(headers.values()))
    root = Path(dicom_root).resolve()

    def shown(f: Path) -> str:
        return str(f.resolve().relative_to(root)) if f.resolve().is_relative_to(root) else str(f)

    return SeriesFiles(
        directory=directory,
        files=list(by_z.values()),
        z=np.array(list(by_z), dtype=np.float64),
        dropped_z=np.array([z_of(f) for f in dropped], dtype=np.float64),
        plane_shape=(int(first.Rows), int(first.Columns)),
        stats=stats,
        dropped_files=[shown(f) for f in dropped],
    )


def _series_uid(path: Path) -> str | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:  # an unreadable file is reported when its series is processed
        return None
    uid = ds.get("SeriesInstanceUID", None)
    return str(uid).strip() if uid else None


def index_series(dicom_root: str | Path) -> dict[str, Path]:
    """``SeriesInstanceUID -> folder`` of every DICOM series under ``dicom_root``, reading a few headers per folder.

    Only the ``SeriesInstanceUID`` tag of the first and last ``.dcm`` file of each folder is read (no pixel data); a
    folder whose two disagree (several series in one folder) has every file read, so LIDC-IDRI (1,018 series) is
    indexed without reading every file; pylidc's scans are then matched by UID, so a root without them fails at
    once instead of after a search per scan.
    """
    index: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(dicom_root):
        dirnames.sort()
        dcm = sorted(f for f in filenames if f.lower().endswith(".dcm") and not f.startswith("."))
        if not dcm:
            continue
        folder = Path(dirpath)
        ends = {_series_uid(folder / dcm[0]), _series_uid(folder / dcm[-1])}
        uids = ends if len(ends) == 1 else {_series_uid(folder / f) for f in dcm}
        for uid in uids - {None}:
            index.setdefault(uid, folder)
    return index
