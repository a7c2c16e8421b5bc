"""LIDC-IDRI -> 2-D lesion crops with 4 grader masks, the recipe of Kohl et al. 2018 (Appendix H.1).

For every scan in pylidc's annotation database (optionally restricted to ``--patients``):

1. find its DICOM folder under ``--dicom-root`` (``<root>/<PatientID>/<StudyUID>/<SeriesUID>/*.dcm`` as TCIA
   delivers it, or any folder under ``<root>/<PatientID>`` whose ``.dcm`` files carry the scan's UIDs);
2. read every header, keep the scan's series, check it is CT and drop each file whose ``|SliceLocation|`` differs
   from ``|ImagePositionPatient[2]|`` (the paper's filter; ``--no-slice-location-filter`` disables it);
3. group the readers' outlines (pylidc annotations = the outlined ">= 3 mm" nodules) into lesions by overlap of
   their tightest 3-D bounding boxes (:func:`group_annotations`), at most 4 per lesion (:func:`select_readers`);
4. read the needed slices with MONAI in HU, resample in-plane to 0.5 mm (bilinear image, nearest masks, no z
   resampling) and cut a 180 x 180 crop centred on the lesion for every axial slice where >= 1 reader drew, padded
   with -1024 HU / 0 outside the image, always with 4 masks (a missing reader is an empty mask);
5. write ``images/<case>.nii.gz`` (float32 HU), ``labels/<case>_g{0..3}.nii.gz`` (uint8) and a per-scan manifest
   ``scans/<scan_id>.json`` atomically; finished scans are skipped on restart; ``datalist.json`` is rebuilt from
   the manifests at the end with a seeded patient-level split (default 722 / 144 / 144 patients, scaled down).

Axis conventions (checked by ``tests/test_lidc.py``): pylidc indexes a scan as ``(row, col, slice)`` with slices
sorted by increasing ``ImagePositionPatient`` z. MONAI's ``PydicomReader`` returns ``pixel_array.T``, i.e.
``(x = col, y = row)``, with an LPS->RAS affine (which changes the affine only, never the voxels). Inside this
module volumes are MONAI-ordered ``(C, X, Y, K)``; the written 2-D crops are ``(row, col)`` like pylidc's planes and
``pixel_array`` (``plt.imshow`` shows the usual axial view).

Usage::

    python -m preprocessing.lidc --dicom-root /data/LIDC-IDRI --out /data/lidc_crops --workers 8
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

# pydicom, torch, MONAI, scipy, tqdm and pylidc are imported where they are used, so that `--help` and the checks of the
# arguments (missing root, --out a file, a root without LIDC series) answer in a second, not after the imports
if TYPE_CHECKING:
    import pydicom
    from monai.data import MetaTensor, PydicomReader
    from monai.transforms import LoadImage
    from pylidc import Annotation, Scan

__all__ = [
    "LIDC_VERSION",
    "NUM_GRADERS",
    "DicomSeriesError",
    "LIDCSettings",
    "Lesion",
    "SeriesFiles",
    "annotation_planes",
    "build_datalist",
    "cli",
    "find_series_dir",
    "group_annotations",
    "index_series",
    "lesion_crops",
    "lesion_mask_crops",
    "locate_lesion_slices",
    "main",
    "process_scan",
    "read_ct_series",
    "read_dicom_header",
    "reader_masks",
    "scan_lesions",
    "select_readers",
    "select_series_files",
    "slice_location_filter",
    "write_lesion_cases",
]

logger = logging.getLogger("preprocessing.lidc")

LIDC_VERSION = 1
NUM_GRADERS = 4
HU_AIR = -1024.0
#: tolerance (mm) when matching pylidc's slice z values to ImagePositionPatient z and when de-duplicating slices
Z_MATCH_TOL = 0.01
#: lesion slices resampled together (bounds memory: 0.977 mm scans become ~1000 x 1000 per slice at 0.5 mm)
SLICE_CHUNK = 8
MANIFEST_DIR = "scans"
STAGING_DIR = ".staging"

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


@dataclass(frozen=True)
class LIDCSettings:
    """Options that change the output; a manifest written with other settings is redone, not skipped."""

    slice_location_filter: bool = True
    tolerance_mm: float = 1e-3
    spacing_mm: float = 0.5
    crop_size: int = 180
    version: int = LIDC_VERSION

    def as_dict(self) -> dict[str, Any]:
        return {
            "slice_location_filter": self.slice_location_filter,
            "tolerance_mm": self.tolerance_mm,
            "spacing_mm": self.spacing_mm,
            "crop_size": self.crop_size,
            "version": self.version,
        }


def _pylidc():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "pkg_resources is deprecated" on import
        import pylidc

    return pylidc


# ----------------------------------------------------------------------------------------------------------- DICOM


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
    import pydicom

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


def _affine(img: MetaTensor) -> np.ndarray:
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
    affine = _affine(slices[0])
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
                import pydicom

                ds = pydicom.dcmread(Path(dirpath) / name, stop_before_pixels=True)
            except Exception:  # an unreadable file here is reported when the matching folder is read, if it matches
                continue
            if (
                str(ds.get("SeriesInstanceUID", "")).strip() == scan.series_instance_uid
                and str(ds.get("StudyInstanceUID", "")).strip() == scan.study_instance_uid
            ):
                return Path(dirpath)
    raise FileNotFoundError(f"scan {scan.id} ({scan.patient_id}): no folder under {base} holds its series; {expected}.")


# ----------------------------------------------------------------------------------------------------- annotations


def _bbox_matrices(annotations: Sequence[Annotation]) -> np.ndarray:
    """``(N, 3, 2)`` inclusive (row, col, slice) index bounds of each annotation (pylidc's ``bbox_matrix``)."""
    return np.array([ann.bbox_matrix() for ann in annotations], dtype=np.int64).reshape(len(annotations), 3, 2)


def _bbox_iou(bbs: np.ndarray) -> np.ndarray:
    """``(N, N)`` IoU of inclusive integer boxes ``(N, 3, 2)`` (hand-written: a few lines of interval arithmetic)."""
    lo, hi = bbs[:, :, 0], bbs[:, :, 1] + 1
    inter = np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0, None).prod(-1)
    vol = (hi - lo).prod(-1)
    return inter / (vol[:, None] + vol[None] - inter)


def group_annotations(annotations: Sequence[Annotation]) -> list[list[Annotation]]:
    """Group the readers' annotations of one scan into lesions: the paper's rule (Appendix H.1).

    Two annotations are the same lesion when their tightest 3-D bounding boxes (pylidc ``bbox()``, inclusive
    ``(row, col, slice)`` index ranges) overlap; lesions are the connected components of that overlap graph
    (``scipy.sparse.csgraph.connected_components``, i.e. union-find over pairwise overlaps).

    Differences to ``Scan.cluster_annotations()``: pylidc links two annotations when a distance between them is
    <= ``tol`` -- by default the minimum Euclidean distance between their contour points, measured in (row, col,
    slice) *index* units although documented as mm, with ``tol`` = the slice thickness, multiplied by 0.9 until no
    cluster exceeds 4 annotations (14 clusters of 5-8 remain in the database). So pylidc links nearby disjoint
    boxes, and its result depends on the slice thickness; the bounding-box rule has no tolerance, links only
    overlapping boxes and can also give groups of more than 4 (23 of 2641 groups over the whole database, 5-8
    annotations each), which :func:`select_readers` reduces to 4.

    Args:
        annotations: pylidc annotations of one scan.

    Returns:
        groups of annotations, each sorted by annotation id; groups ordered by their smallest annotation id.
    """
    annotations = list(annotations)
    if not annotations:
        return []
    bbs = _bbox_matrices(annotations)
    lo, hi = bbs[:, :, 0], bbs[:, :, 1]
    overlap = np.all((lo[:, None] <= hi[None]) & (lo[None] <= hi[:, None]), axis=-1)
    from scipy.sparse.csgraph import connected_components

    n, labels = connected_components(overlap, directed=False)
    groups = [sorted((a for a, lab in zip(annotations, labels) if lab == g), key=lambda a: a.id) for g in range(n)]
    return sorted(groups, key=lambda g: g[0].id)


def select_readers(
    group: Sequence[Annotation], max_readers: int = NUM_GRADERS
) -> tuple[list[Annotation], list[Annotation]]:
    """Keep at most ``max_readers`` annotations of a lesion group.

    LIDC has 4 readers per scan, so a group of > 4 annotations merges neighbouring nodules (or a reader split one
    nodule). Kept: the annotation whose bounding box has the largest summed IoU with the rest of the group (the
    group's core) plus the ``max_readers - 1`` annotations whose bounding boxes have the largest IoU with it; ties
    go to the smaller annotation id. The reader identity is not stored in LIDC, so one reader may appear twice.

    Returns:
        ``(kept, dropped)``, each sorted by annotation id.
    """
    group = sorted(group, key=lambda a: a.id)
    if len(group) <= max_readers:
        return list(group), []
    iou = _bbox_iou(_bbox_matrices(group))
    np.fill_diagonal(iou, 0.0)
    core = int(np.lexsort((np.arange(len(group)), -iou.sum(1)))[0])
    others = [i for i in np.lexsort((np.arange(len(group)), -iou[core])) if i != core]
    keep = {core, *others[: max_readers - 1]}
    kept = [a for i, a in enumerate(group) if i in keep]
    dropped = [a for i, a in enumerate(group) if i not in keep]
    return kept, dropped


def annotation_planes(annotation: Annotation, plane_shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """One reader's mask on each slice of its bounding box, placed into the full image plane.

    Args:
        annotation: a pylidc annotation.
        plane_shape: ``(rows, cols)`` of the scan's slices.

    Returns:
        ``{k: (rows, cols) bool}`` for each slice index ``k`` (into ``scan.slice_zvals``) of the annotation's
        bounding box, in pylidc's ``(row, col)`` order (``boolean_mask()`` placed at ``bbox()``; contour pixels are
        excluded as pylidc does by default). Slices without a contour are empty planes.
    """
    mask = annotation.boolean_mask()
    bb = annotation.bbox()
    planes = {}
    for kk, k in enumerate(range(bb[2].start, bb[2].stop)):
        plane = np.zeros(plane_shape, dtype=bool)
        plane[bb[0], bb[1]] = mask[:, :, kk]
        planes[int(k)] = plane
    return planes


# ----------------------------------------------------------------------------------------------------------- crops


def lesion_crops(
    volume: MetaTensor,
    masks: np.ndarray,
    center_xy: Sequence[float],
    spacing: float = 0.5,
    size: int = 180,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample slices in-plane and cut a lesion-centred crop from each.

    Args:
        volume: ``(X, Y, K)`` HU MetaTensor (MONAI order, see :func:`read_ct_series`).
        masks: ``(A, X, Y, K)`` binary reader masks on the same grid.
        center_xy: crop centre as a (fractional) ``(x, y)`` voxel index of ``volume``.
        spacing: in-plane output spacing in mm.
        size: crop side in output pixels.

    Returns:
        ``(images (K, size, size) float32 HU, masks (K, A, size, size) uint8, centre_rc)``; images and masks are in
        ``(row, col)`` order; ``centre_rc`` is the crop centre as a ``(row, col)`` index of the input slices.
        Where the crop leaves the image it is filled with -1024 HU / 0.
    """
    if volume.ndim != 3 or masks.ndim != 4 or tuple(masks.shape[1:]) != tuple(volume.shape):
        raise ValueError(
            f"expected volume (X, Y, K) and masks (A, X, Y, K), got {tuple(volume.shape)} and {masks.shape}."
        )
    images, labels, centre_rc = _resample_and_crop(_affine(volume), masks, center_xy, spacing, size, volume)
    return cast(np.ndarray, images), labels, centre_rc


def lesion_mask_crops(
    masks: np.ndarray,
    affine: np.ndarray,
    center_xy: Sequence[float],
    spacing: float = 0.5,
    size: int = 180,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`lesion_crops` of the reader masks alone (no CT image needed): the same resampling and crop.

    Args:
        masks: ``(A, X, Y, K)`` binary reader masks (MONAI order).
        affine: ``(4, 4)`` voxel-to-world affine of the mask grid (what :func:`read_ct_series` gives the volume).
        center_xy: crop centre as a (fractional) ``(x, y)`` voxel index.
        spacing: in-plane output spacing in mm.
        size: crop side in output pixels.

    Returns:
        ``(masks (K, A, size, size) uint8 in (row, col) order, centre_rc)``; identical to the masks and centre that
        :func:`lesion_crops` returns for any volume with this affine.
    """
    affine = np.asarray(affine, dtype=np.float64)
    if masks.ndim != 4 or affine.shape != (4, 4):
        raise ValueError(f"expected masks (A, X, Y, K) and a 4 x 4 affine, got {masks.shape} and {affine.shape}.")
    _, labels, centre_rc = _resample_and_crop(affine, masks, center_xy, spacing, size, None)
    return labels, centre_rc


def _resample_and_crop(
    affine_np: np.ndarray,
    masks: np.ndarray,
    center_xy: Sequence[float],
    spacing: float,
    size: int,
    volume: MetaTensor | None,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The shared body of :func:`lesion_crops` and :func:`lesion_mask_crops` (``volume=None``: masks only)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacingd, SpatialCropd, SpatialPadd

    affine = torch.as_tensor(affine_np)
    data = {"label": MetaTensor(torch.as_tensor(masks, dtype=torch.float32), affine=affine)}
    keys, modes = ["label"], ["nearest"]
    if volume is not None:
        data["image"] = MetaTensor(volume.as_tensor()[None].float(), affine=affine)
        keys, modes = ["image", "label"], ["bilinear", "nearest"]
    ref = keys[0]  # every key shares the resampled grid
    data = Spacingd(keys=keys, pixdim=[spacing, spacing, -1], mode=modes)(data)
    _, nx, ny, nk = data[ref].shape
    if volume is not None:
        data = SpatialPadd(keys="image", spatial_size=[nx + size, ny + size, -1], value=HU_AIR)(data)
    data = SpatialPadd(keys="label", spatial_size=[nx + size, ny + size, -1], value=0)(data)
    # index -> world -> index through the affines MONAI updated (hand-written: two 4x4 products)
    world = affine.numpy() @ np.array([center_xy[0], center_xy[1], 0.0, 1.0])
    padded = _affine(data[ref])
    cx, cy = (np.linalg.solve(padded, world))[:2]
    start = [int(round(cx - (size - 1) / 2)), int(round(cy - (size - 1) / 2)), 0]
    data = SpatialCropd(keys=keys, roi_start=start, roi_end=[start[0] + size, start[1] + size, nk])(data)
    centre_world = _affine(data[ref]) @ np.array([(size - 1) / 2, (size - 1) / 2, 0, 1])
    centre_xy = np.linalg.solve(affine.numpy(), centre_world)[:2]
    images = None
    if volume is not None:
        images = data["image"].as_tensor()[0].permute(2, 1, 0).numpy().astype(np.float32)  # (K, Y=row, X=col)
    labels = (data["label"].as_tensor().permute(3, 0, 2, 1).numpy() > 0.5).astype(np.uint8)  # (K, A, row, col)
    return images, labels, np.array([centre_xy[1], centre_xy[0]])


# ------------------------------------------------------------------------------------------------------------ scans


def _manifest_path(out_dir: Path, scan_id: int) -> Path:
    return out_dir / MANIFEST_DIR / f"{scan_id:04d}.json"


def _write_json_atomic(path: Path, content: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=1))
    os.replace(tmp, path)


def _match_z(targets: Iterable[float], available: np.ndarray) -> dict[float, int]:
    """``{z: index into available}`` for each target z found within :data:`Z_MATCH_TOL`."""
    found = {}
    for z in targets:
        if len(available):
            i = int(np.argmin(np.abs(available - z)))
            if abs(available[i] - z) <= Z_MATCH_TOL:
                found[z] = i
    return found


def _get_scan(scan_id: int) -> Scan:
    pl = _pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).first()
    if scan is None:
        raise ValueError(f"scan id {scan_id} is not in pylidc's database (expected 1..1018).")
    return scan


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


@dataclass
class Lesion:
    """One lesion of a scan: up to 4 readers' annotations and their masks."""

    annotations: list[Any]
    planes: list[dict[int, np.ndarray]] = field(default_factory=list)  # per reader {k: (rows, cols) bool}
    slices: list[int] = field(default_factory=list)  # k (into scan.slice_zvals) with >= 1 non-empty reader mask
    center_rc: tuple[float, float] = (0.0, 0.0)  # centre of the union bbox, (row, col) index


def scan_lesions(scan: Scan) -> tuple[list[Lesion], list[str]]:
    """Group a scan's annotations into lesions (:func:`group_annotations`, :func:`select_readers`).

    Returns:
        ``(lesions, notes)``: lesions with their annotations and union-bbox centre; notes about dropped readers.
    """
    lesions, notes = [], []
    for group in group_annotations(scan.annotations):
        kept, dropped = select_readers(group)
        if dropped:
            notes.append(
                f"scan {scan.id} ({scan.patient_id}): lesion group of {len(group)} annotations "
                f"{[a.id for a in group]}; kept {[a.id for a in kept]} (core + largest bbox IoU), dropped "
                f"{[a.id for a in dropped]}"
            )
        bbs = _bbox_matrices(kept)
        centre = ((bbs[:, 0, 0].min() + bbs[:, 0, 1].max()) / 2, (bbs[:, 1, 0].min() + bbs[:, 1, 1].max()) / 2)
        lesions.append(Lesion(kept, center_rc=(float(centre[0]), float(centre[1]))))
    return lesions, notes


def locate_lesion_slices(scan: Scan, lesions: list[Lesion], series: SeriesFiles) -> tuple[int, list[str]]:
    """Fill each lesion's reader masks and the slices to crop: where >= 1 reader's mask is non-empty and a kept
    DICOM file exists at that z.

    Returns:
        ``(number of lesion slices without a file, notes)``.
    """
    zvals = scan.slice_zvals
    missing_total, notes = 0, []
    for lesion in lesions:
        lesion.planes = [annotation_planes(a, series.plane_shape) for a in lesion.annotations]
        ks = sorted({k for planes in lesion.planes for k, p in planes.items() if p.any()})
        found = _match_z([float(zvals[k]) for k in ks], series.z)
        lesion.slices = [k for k in ks if float(zvals[k]) in found]
        missing = [k for k in ks if float(zvals[k]) not in found]
        if not missing:
            continue
        missing_total += len(missing)
        filtered = _match_z([float(zvals[k]) for k in missing], series.dropped_z)
        where = f"scan {scan.id} ({scan.patient_id}), lesion {[a.id for a in lesion.annotations]}"
        by_filter = [k for k in missing if float(zvals[k]) in filtered]
        absent = [k for k in missing if float(zvals[k]) not in filtered]
        if by_filter:
            notes.append(f"{where}: slices {by_filter} dropped by the SliceLocation filter")
        if absent:
            notes.append(f"{where}: slices {absent} have no DICOM file in {series.directory}")
    return missing_total, notes


def reader_masks(lesion: Lesion, ks: Sequence[int]) -> np.ndarray:
    """A lesion's reader masks on slices ``ks`` in MONAI order, always :data:`NUM_GRADERS` of them.

    Args:
        lesion: a lesion whose ``planes`` are filled (:func:`locate_lesion_slices`).
        ks: slice indices (into ``scan.slice_zvals``).

    Returns:
        ``(NUM_GRADERS, X = cols, Y = rows, len(ks))`` uint8: pylidc's ``(row, col)`` planes transposed; a missing
        reader, or a slice outside a reader's bounding box, is an empty mask.
    """
    rows, cols = lesion.planes[0][next(iter(lesion.planes[0]))].shape
    masks = np.zeros((NUM_GRADERS, cols, rows, len(ks)), dtype=np.uint8)
    for g, planes in enumerate(lesion.planes):
        for j, k in enumerate(ks):
            if k in planes:
                masks[g, :, :, j] = planes[k].T
    return masks


def write_lesion_cases(
    scan: Scan, index: int, lesion: Lesion, volume: MetaTensor, settings: LIDCSettings, folder: Path
) -> list[dict[str, Any]]:
    """Crop every slice of a lesion and write image + 4 masks under ``folder``; return their datalist entries.

    Args:
        scan: the pylidc scan.
        index: the lesion's index within the scan (``nodule_index``).
        lesion: its readers' masks and slices.
        volume: ``(X, Y, K)`` HU MetaTensor holding (at least) the lesion's slices, ``meta["slice_z"]``.
        settings: spacing and crop size.
        folder: where ``images/`` and ``labels/`` are written.
    """
    from monai.data import MetaTensor

    zvals, vol_z = scan.slice_zvals, np.asarray(volume.meta["slice_z"], dtype=np.float64)
    spacing = (settings.spacing_mm, settings.spacing_mm)
    cases = []
    for c0 in range(0, len(lesion.slices), SLICE_CHUNK):
        ks = lesion.slices[c0 : c0 + SLICE_CHUNK]
        idx = [_match_z([float(zvals[k])], vol_z)[float(zvals[k])] for k in ks]
        sub = MetaTensor(volume.as_tensor()[..., idx], affine=volume.affine)
        masks = reader_masks(lesion, ks)
        centre_xy = (lesion.center_rc[1], lesion.center_rc[0])
        images, labels, centre_rc = lesion_crops(sub, masks, centre_xy, settings.spacing_mm, settings.crop_size)
        for j, k in enumerate(ks):
            cases.append(
                write_case(folder, scan, index, lesion, int(k), float(zvals[k]), images[j], labels[j], centre_rc, spacing)
            )
    return cases


def write_crop_files(
    folder: Path,
    case: str,
    image: np.ndarray,
    labels: np.ndarray,
    spacing: Sequence[float],
    patient_id: str,
    writer: Callable[[Path, np.ndarray, Sequence[float]], Any] | None = None,
) -> dict[str, Any]:
    """Write ``images/<case>.nii.gz`` and ``labels/<case>_g<k>.nii.gz`` (``H x W`` image, ``A x H x W`` masks) and
    return the datalist entry's common keys; the A masks are also the modes, 1/A each."""
    if writer is None:
        from monai_probunet.data.disk_format import write_nifti as writer
    label_paths = [f"labels/{case}_g{g}.nii.gz" for g in range(len(labels))]
    writer(folder / "images" / f"{case}.nii.gz", image, spacing)
    for g, path in enumerate(label_paths):
        writer(folder / path, labels[g], spacing)
    return {
        "image": f"images/{case}.nii.gz",
        "label": label_paths,
        "modes": list(label_paths),
        "mode_probs": [1.0 / len(labels)] * len(labels),
        "patient_id": patient_id,
        "case_id": case,
    }


def write_case(
    folder: Path,
    scan: Any,
    index: int,
    lesion: Any,
    k: int,
    z_mm: float,
    image: np.ndarray,
    labels: np.ndarray,
    centre_rc: Sequence[float],
    spacing: Sequence[float],
    writer: Callable[[Path, np.ndarray, Sequence[float]], Any] | None = None,
) -> dict[str, Any]:
    """Write one crop (``H x W`` image, ``4 x H x W`` reader masks) as NIfTI and return its datalist entry.

    The modes of the true distribution are the 4 reader masks with probability 1/4 each (empties included).
    ``writer(path, array, spacing)`` writes one NIfTI file (default
    :func:`monai_probunet.data.disk_format.write_nifti`).
    """
    case = f"{scan.patient_id}_s{scan.id:04d}_n{index:02d}_k{k:03d}"
    return {
        **write_crop_files(folder, case, image, labels, spacing, scan.patient_id, writer),
        "scan_id": int(scan.id),
        "nodule_index": index,
        "slice_index": k,
        "z_mm": z_mm,
        "annotation_ids": [int(a.id) for a in lesion.annotations],
        "readers_drawn": int(np.asarray(labels).reshape(NUM_GRADERS, -1).any(1).sum()),
        "crop_center_rc": [round(float(c), 4) for c in centre_rc],
    }


def _commit_scan(out_dir: Path, staging: Path, manifest: dict[str, Any]) -> None:
    """Move a scan's staged files into place (each ``os.replace`` is atomic), remove files an older manifest of the
    scan listed but this one does not, then write the manifest (atomically): a scan counts as done only after this."""
    path = _manifest_path(out_dir, manifest["scan_id"])
    new_files = {p for c in manifest["cases"] for p in [c["image"], *c["label"]]}
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("cases", [])
        except (OSError, json.JSONDecodeError):
            old = []
        for p in {p for c in old for p in [c.get("image"), *c.get("label", [])] if p} - new_files:
            (out_dir / p).unlink(missing_ok=True)
    for p in sorted(new_files):
        (out_dir / p).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / p, out_dir / p)
    _write_json_atomic(path, manifest)


def process_scan(
    scan_id: int,
    dicom_root: str | Path,
    out_dir: str | Path,
    settings: LIDCSettings = LIDCSettings(),
    series_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Preprocess one scan into lesion crops and write them plus ``scans/<scan_id>.json`` (atomically).

    Only the slices that hold a lesion are read (after every header of the series was checked and filtered).

    Args:
        scan_id: pylidc ``Scan.id``.
        dicom_root: the LIDC-IDRI download (see :func:`find_series_dir`).
        out_dir: the dataset folder.
        settings: preprocessing options.
        series_dir: the scan's DICOM folder if known (:func:`index_series`), else searched under ``dicom_root``.

    Returns:
        the manifest: scan/patient ids, file statistics, lesion counts, ``notes`` to log, and ``cases`` (datalist
        entries without split). Scans without annotations are recorded without opening their DICOM files.

    Raises:
        FileNotFoundError: the scan's DICOM folder is missing or holds no file of its series.
        DicomSeriesError: a broken file or a series that is not the expected CT; nothing of the scan is left behind.
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    scan = _get_scan(scan_id)
    lesions, notes = scan_lesions(scan)
    manifest: dict[str, Any] = {
        "scan_id": int(scan.id),
        "patient_id": scan.patient_id,
        "study_uid": scan.study_instance_uid,
        "series_uid": scan.series_instance_uid,
        "settings": settings.as_dict(),
        "annotations": len(scan.annotations),
        "lesions": len(lesions),
        "groups_over_4": len(notes),
        "files": 0,
        "files_other_series": 0,
        "files_dropped_slice_location": 0,
        "files_dropped_duplicate_z": 0,
        "dropped_files": [],
        "slices_missing": 0,
        "lesions_with_cases": 0,
        "cases": [],
    }
    staging = out_dir / STAGING_DIR / f"{scan.id:04d}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if lesions:
            series = select_series_files(scan, dicom_root, settings, series_dir)
            manifest.update(series.stats, dropped_files=series.dropped_files)
            manifest["slices_missing"], more_notes = locate_lesion_slices(scan, lesions, series)
            notes += more_notes
            needed = sorted({float(scan.slice_zvals[k]) for lesion in lesions for k in lesion.slices})
            index_of_z = _match_z(needed, series.z)
            if needed:
                volume = read_ct_series([series.files[index_of_z[z]] for z in needed])
                (staging / "images").mkdir(parents=True)
                (staging / "labels").mkdir()
                for i, lesion in enumerate(lesions):
                    if lesion.slices:
                        manifest["cases"] += write_lesion_cases(scan, i, lesion, volume, settings, staging)
                        manifest["lesions_with_cases"] += 1
        manifest.update(notes=notes, seconds=round(time.time() - t0, 2))
        _commit_scan(out_dir, staging, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


# -------------------------------------------------------------------------------------------------------- datalist

_SUMMED = (
    "annotations",
    "lesions",
    "lesions_with_cases",
    "groups_over_4",
    "files",
    "files_dropped_slice_location",
    "files_dropped_duplicate_z",
    "files_other_series",
    "slices_missing",
)


def build_datalist(
    out_dir: str | Path,
    patients: Sequence[str],
    scan_ids: Sequence[int],
    seed: int = 0,
    split: Sequence[int] = (722, 144, 144),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """(Re)build ``datalist.json`` from the per-scan manifests and write it atomically.

    The split is drawn over ``patients`` (all selected patients, whether or not their scans produced crops or
    failed), so a failed or missing scan never reshuffles the others; counts are scaled down by
    ``patient_level_split`` when fewer patients exist (722 / 144 / 144 = the paper's 1010 patients).

    Args:
        out_dir: the dataset folder with ``scans/*.json``.
        patients: patient ids to split.
        scan_ids: scans whose manifests are included (scans without a manifest are left out).
        seed: split seed.
        split: training / validation / test patient counts.
        extra: additional top-level metadata (e.g. errors of this run).

    Returns:
        the datalist content: ``training`` / ``validation`` / ``test`` entries plus metadata (``counts``,
        ``slice_location_filter``, ``generator``, ``spacing``, ...).
    """
    from monai_probunet.data.disk_format import DATALIST_NAME, SPLITS, patient_level_split

    out_dir = Path(out_dir)
    split_of = patient_level_split(list(patients), [int(n) for n in split], seed)
    entries: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    totals = dict.fromkeys(("scans", "scans_with_cases", "images", *_SUMMED), 0)
    settings: dict[str, Any] | None = None
    for scan_id in sorted(scan_ids):
        path = _manifest_path(out_dir, scan_id)
        if not path.is_file():
            continue
        manifest = json.loads(path.read_text())
        settings = settings or manifest["settings"]
        totals["scans"] += 1
        totals["scans_with_cases"] += bool(manifest["cases"])
        totals["images"] += len(manifest["cases"])
        for key in _SUMMED:
            totals[key] += int(manifest.get(key, 0))
        for case in manifest["cases"]:
            entries[split_of[case["patient_id"]]].append(case)
    settings = settings or LIDCSettings().as_dict()
    content: dict[str, Any] = {
        "name": "lidc",
        "description": "LIDC-IDRI 2-D lesion crops with 4 reader masks (Kohl et al. 2018, Appendix H.1)",
        "generator": {
            "name": "preprocessing.lidc",
            "version": LIDC_VERSION,
            "params": {"seed": seed, "split": list(split), **settings},
        },
        "spacing": [settings["spacing_mm"]] * 2,
        "crop_size": [settings["crop_size"]] * 2,
        "num_graders": NUM_GRADERS,
        "labels": {"background": 0, "lesion": 1},
        "counts": {
            **totals,
            "patients": {s: sum(1 for p in set(patients) if split_of[p] == s) for s in SPLITS},
            "images_per_split": {s: len(entries[s]) for s in SPLITS},
        },
        "slice_location_filter": {
            "enabled": settings["slice_location_filter"],
            "tolerance_mm": settings["tolerance_mm"],
            "files_checked": totals["files"],
            "files_dropped": totals["files_dropped_slice_location"],
        },
        **(extra or {}),
        **entries,
    }
    _write_json_atomic(out_dir / DATALIST_NAME, content)
    return content


# ------------------------------------------------------------------------------------------------------------ main


def _init_worker() -> None:
    """Pool worker start-up: one thread per process, no import noise, pylidc's database opened once."""
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)  # "nvImageCodec not available"
    _pylidc()


def _select_scans(patients: Sequence[str] | None) -> list[tuple[int, str, str]]:
    """``(scan id, patient id, series UID)`` of every scan in pylidc's database, or of the given patients' scans."""
    pl = _pylidc()
    scans = [
        (int(s.id), s.patient_id, str(s.series_instance_uid).strip())
        for s in pl.query(pl.Scan).order_by(pl.Scan.id)
    ]
    if patients:
        unknown = sorted(set(patients) - {p for _, p, _ in scans})
        if unknown:
            raise ValueError(f"--patients: {unknown} not in pylidc's database (expected ids like LIDC-IDRI-0078).")
        scans = [sc for sc in scans if sc[1] in set(patients)]
    return scans


def _series_uid(path: Path) -> str | None:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except Exception:  # an unreadable file is reported when its series is processed
        return None
    uid = ds.get("SeriesInstanceUID", None)
    return str(uid).strip() if uid else None


def index_series(dicom_root: str | Path) -> dict[str, Path]:
    """``SeriesInstanceUID -> folder`` of every DICOM series under ``dicom_root``, reading a few headers per folder.

    Only the ``SeriesInstanceUID`` tag of the first and last ``.dcm`` file of each folder is read (no pixel data); a
    folder whose two disagree (several series in one folder) has every file read. LIDC-IDRI (1,018 series, about
    244,000 files) is indexed in seconds; pylidc's scans are then matched by UID, so a root without them fails at
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


def _short_list(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m preprocessing.lidc", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dicom-root", required=True, help="the LIDC-IDRI download: <root>/<PatientID>/<StudyUID>/<SeriesUID>/*.dcm"
    )
    p.add_argument("--out", required=True, help="output dataset folder (resumable)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (1 = in this process)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    p.add_argument(
        "--split", type=int, nargs=3, default=[722, 144, 144], metavar=("TRAIN", "VAL", "TEST"),
        help="patients per split, scaled down when fewer patients exist",
    )
    p.add_argument(
        "--no-slice-location-filter", action="store_true",
        help="keep files whose |SliceLocation| differs from |ImagePositionPatient z|",
    )
    p.add_argument("--patients", nargs="+", default=None, metavar="ID", help="only these patients (LIDC-IDRI-0078 ...)")
    return p


def _pending(scans: Sequence[tuple[int, str]], out_dir: Path, settings: LIDCSettings) -> list[tuple[int, str]]:
    """Scans without a manifest written with the same settings (the others are finished and skipped)."""
    todo = []
    for scan_id, patient in scans:
        path = _manifest_path(out_dir, scan_id)
        try:
            done = path.is_file() and json.loads(path.read_text()).get("settings") == settings.as_dict()
        except (OSError, json.JSONDecodeError):
            done = False
        if done:
            logger.debug("scan %d (%s): already done (%s), skipping", scan_id, patient, path.relative_to(out_dir))
        else:
            todo.append((scan_id, patient))
    return todo


def _run(
    todo: Sequence[tuple[int, str]],
    dicom_root: Path,
    out_dir: Path,
    settings: LIDCSettings,
    workers: int,
    record: Callable[[int, str, dict[str, Any] | None, BaseException | None], None],
    series_dirs: dict[int, Path] | None = None,
) -> None:
    """Process ``todo`` scans in this process (``workers <= 1``) or a spawn-started pool, with a progress bar."""
    from tqdm import tqdm

    with tqdm(total=len(todo), desc="LIDC scans", unit="scan", file=sys.stderr) as bar:
        if workers <= 1:
            for scan_id, patient in todo:
                try:
                    result = process_scan(scan_id, dicom_root, out_dir, settings, (series_dirs or {}).get(scan_id))
                except Exception as e:  # logged with the scan and the file; the run continues
                    record(scan_id, patient, None, e)
                else:
                    record(scan_id, patient, result, None)
                bar.update()
            return
        ctx = multiprocessing.get_context("spawn")  # pylidc's SQLite session must not be shared across fork
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {
                pool.submit(
                    process_scan, scan_id, dicom_root, out_dir, settings, (series_dirs or {}).get(scan_id)
                ): (scan_id, patient)
                for scan_id, patient in todo
            }
            for future in as_completed(futures):
                scan_id, patient = futures[future]
                try:
                    result = future.result()
                except Exception as e:
                    record(scan_id, patient, None, e)
                else:
                    record(scan_id, patient, result, None)
                bar.update()


def _check_out(out_dir: Path, arg: str) -> None:
    """Refuse an ``--out`` that is a file or cannot be created / written (before any work)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {arg} is a file, not a folder; give the dataset folder to write (or resume).")
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--out {arg}: {probe} is a file, not a folder.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out {arg}: cannot write into {probe}.")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the pipeline; returns the summary (also logged; the counts are stored in ``datalist.json``).

    The arguments are checked before any work: the root must exist, ``--out`` must be a folder (or creatable);
    the root's DICOM series are indexed once (:func:`index_series`) and matched with pylidc's scans by
    ``SeriesInstanceUID``: a root holding none of the selected scans fails at once; when only some are there (a
    partial download) those are processed and the absent ones are summarised in one log line (and listed under
    ``absent`` in ``datalist.json``).

    Raises:
        FileNotFoundError: ``--dicom-root`` does not exist (before anything is written).
        ValueError: unknown ``--patients``, ``--out`` a file or not writable, or no selected scan's series under
            the root.
    """
    args = _parser().parse_args(argv)
    dicom_root = Path(args.dicom_root).expanduser().resolve()
    if not dicom_root.is_dir():
        if dicom_root.exists():
            raise ValueError(f"--dicom-root {args.dicom_root} is a file, expected the LIDC-IDRI DICOM folder.")
        raise FileNotFoundError(f"--dicom-root {args.dicom_root} does not exist (expected the LIDC-IDRI DICOM folder).")
    out_dir = Path(args.out).expanduser().resolve()
    _check_out(out_dir, args.out)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}.")
    settings = LIDCSettings(slice_location_filter=not args.no_slice_location_filter)
    t0 = time.time()
    series = index_series(dicom_root)
    logger.info("%d DICOM series under %s (indexed in %.1f s)", len(series), dicom_root, time.time() - t0)
    if not series:
        raise ValueError(f"--dicom-root {args.dicom_root} holds no .dcm file (expected the LIDC-IDRI DICOM folder).")
    selected = _select_scans(args.patients)
    present = [(i, p) for i, p, uid in selected if uid in series]
    absent = [(i, p) for i, p, uid in selected if uid not in series]
    if not present:
        raise ValueError(
            f"--dicom-root {args.dicom_root}: none of the {len(selected)} selected LIDC scans' DICOM series is there "
            f"({len(series)} other series found; expected the LIDC-IDRI download, e.g. "
            "<root>/LIDC-IDRI-0001/<study>/<series>/*.dcm)."
        )
    if absent:
        patients = sorted({p for _, p in absent})
        logger.warning(
            "%d of %d selected scans are not under %s (partial download?), skipped: %d patient(s) %s",
            len(absent), len(selected), dicom_root, len(patients), _short_list(patients),
        )
    scans = present
    series_dirs = {i: series[uid] for i, _, uid in selected if uid in series}
    (out_dir / MANIFEST_DIR).mkdir(parents=True, exist_ok=True)
    todo = _pending(scans, out_dir, settings)
    logger.info(
        "%d scans selected, %d already done (skipped), %d to process with %d worker(s)",
        len(scans), len(scans) - len(todo), len(todo), args.workers,
    )
    errors: list[dict[str, Any]] = []

    def record(scan_id: int, patient: str, result: dict[str, Any] | None, exc: BaseException | None) -> None:
        if exc is not None:
            errors.append({"scan_id": scan_id, "patient_id": patient, "error": f"{type(exc).__name__}: {exc}"})
            logger.error("scan %d (%s) failed, continuing: %s: %s", scan_id, patient, type(exc).__name__, exc)
            return
        for note in result.get("notes", []):
            logger.warning(note)
        logger.debug(
            "scan %d (%s): %d lesions, %d images, %d of %d files dropped by the SliceLocation filter, %.1f s",
            scan_id, patient, result["lesions_with_cases"], len(result["cases"]),
            result["files_dropped_slice_location"], result["files"], result["seconds"],
        )

    from tqdm.contrib.logging import logging_redirect_tqdm

    from monai_probunet.data.disk_format import DATALIST_NAME, SPLITS

    with logging_redirect_tqdm():  # log lines above the progress bar
        _run(todo, dicom_root, out_dir, settings, args.workers, record, series_dirs)
    shutil.rmtree(out_dir / STAGING_DIR, ignore_errors=True)

    content = build_datalist(
        # the split is drawn over every selected patient, present or not: completing a partial download later
        # does not reshuffle the patients already processed
        out_dir, [p for _, p, _ in selected], [i for i, _, _ in selected], args.seed, args.split,
        extra={
            "errors": errors,
            "absent": [{"scan_id": i, "patient_id": p} for i, p in absent],
            "dicom_root": str(dicom_root),
        },
    )
    counts = content["counts"]
    summary = {
        **counts,
        "scans_selected": len(selected),
        "scans_absent": len(absent),
        "scans_skipped": len(scans) - len(todo),
        "errors": len(errors),
        "datalist": str(out_dir / DATALIST_NAME),
    }
    logger.info(
        "done: %d of %d scans finished (%d skipped as already done, %d errors, %d not under the root); %d lesions "
        "with crops, %d images (training / validation / test: %s); SliceLocation filter dropped %d of %d files; %d "
        "lesion slices without a file",
        counts["scans"], len(selected), summary["scans_skipped"], len(errors), len(absent),
        counts["lesions_with_cases"], counts["images"], " / ".join(str(counts["images_per_split"][s]) for s in SPLITS),
        counts["files_dropped_slice_location"], counts["files"], counts["slices_missing"],
    )
    if errors:
        logger.warning("%d scan(s) failed (see 'errors' in %s); rerun to retry them", len(errors), DATALIST_NAME)
    return summary


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m preprocessing.lidc``: :func:`main` with exit status 0 (images written), 1 (the run finished but
    produced no image) or 2 (bad arguments or inputs: one line on stderr, no traceback)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = main(argv)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if summary["images"] == 0:
        print(
            f"error: no image was written ({summary['scans']} scans finished, {summary['errors']} failed, "
            f"{summary['scans_absent']} not under the root); see the log above and {summary['datalist']}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
