"""Writing LIDC-IDRI lesion crops as a dataset: NIfTI cases, per-scan manifests committed atomically, the datalist.

:func:`process_scan` turns one scan into ``images/<case>.nii.gz`` (float32 HU), ``labels/<case>_g{0..3}.nii.gz``
(uint8) and ``scans/<scan_id>.json``, all staged and moved into place so a scan counts as done only when complete;
:func:`build_datalist` rebuilds ``datalist.json`` from the manifests with a seeded patient-level split.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from monai.data import MetaTensor

from ..io_utils import atomic_write_json
from .disk_format import DATALIST_NAME, SPLITS, patient_level_split, write_nifti
from .lidc_dicom import match_z, read_ct_series, select_series_files
from .lidc_lesions import (
    NUM_GRADERS,
    SLICE_CHUNK,
    Lesion,
    get_scan,
    lesion_crops,
    locate_lesion_slices,
    reader_masks,
    scan_lesions,
)
from .lidc_settings import LIDC_VERSION, MANIFEST_DIR, STAGING_DIR, LIDCSettings

if TYPE_CHECKING:
    from pylidc import Scan

__all__ = [
    "LIDC_VERSION",
    "MANIFEST_DIR",
    "STAGING_DIR",
    "LIDCSettings",
    "build_datalist",
    "manifest_path",
    "process_scan",
    "write_case",
    "write_crop_files",
    "write_lesion_cases",
]


def manifest_path(out_dir: Path, scan_id: int) -> Path:
    return out_dir / MANIFEST_DIR / f"{scan_id:04d}.json"


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
    zvals, vol_z = scan.slice_zvals, np.asarray(volume.meta["slice_z"], dtype=np.float64)
    spacing = (settings.spacing_mm, settings.spacing_mm)
    cases = []
    for c0 in range(0, len(lesion.slices), SLICE_CHUNK):
        ks = lesion.slices[c0 : c0 + SLICE_CHUNK]
        idx = [match_z([float(zvals[k])], vol_z)[float(zvals[k])] for k in ks]
        sub = MetaTensor(volume.as_tensor()[..., idx], affine=volume.affine)
        masks = reader_masks(lesion, ks)
        centre_xy = (lesion.center_rc[1], lesion.center_rc[0])
        images, labels, centre_rc = lesion_crops(sub, masks, centre_xy, settings.spacing_mm, settings.crop_size)
        for j, k in enumerate(ks):
            cases.append(
                write_case(
                    folder, scan, index, lesion, int(k), float(zvals[k]), images[j], labels[j], centre_rc, spacing
                )
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
        writer = write_nifti
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
    path = manifest_path(out_dir, manifest["scan_id"])
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
    atomic_write_json(path, manifest)


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
    scan = get_scan(scan_id)
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
            index_of_z = match_z(needed, series.z)
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
    out_dir = Path(out_dir)
    split_of = patient_level_split(list(patients), [int(n) for n in split], seed)
    entries: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    totals = dict.fromkeys(("scans", "scans_with_cases", "images", *_SUMMED), 0)
    settings: dict[str, Any] | None = None
    for scan_id in sorted(scan_ids):
        path = manifest_path(out_dir, scan_id)
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
    atomic_write_json(out_dir / DATALIST_NAME, content)
    return content
