"""Export a MONAI Label studies folder's images and their raters' labels in the project's on-disk format.

The MONAI Label app (``apps/monailabel``) keeps each rater's outline of an image under the label tag
``rater_<name>`` of its local datastore (``<studies>/datastore_v2.json``, ``<studies>/labels/rater_<name>/``; on a
DICOMweb server each rater's SEG, read into the same layout in the datastore's cache), with the rater and the time
(``ts``, seconds) in the label's info. :func:`export_rater_dataset` writes every image that at least one rater
outlined, with its raters' masks as graders ``_g0.._g{A-1}`` ordered by submission time
(:mod:`monai_probunet.data.disk_format`), with patient-level splits:

* a 2-D image (a candidate crop) as it is: one case;
* a CT volume as the model's 2-D crops (:mod:`monai_probunet.data.volume_crops`): one case per lesion (a connected
  part of the union of the raters' outlines) and axial slice it spans, the model's field (``spacing``, ``roi_size``)
  around the lesion's centre on that slice, each rater's mask on the slice a grader.

A rater who reviewed an image and drew nothing (on a volume: nothing on that slice) is an empty grader. An image with
fewer raters than ``A`` fills the remaining grader slots by repeating its own raters in turn (never with empty masks,
which would claim "no lesion"); the entry's ``raters`` list says who each slot is. Command::

    python -m monai_probunet.data.raters --studies STUDIES --out DATASET [--model bundle/models/model.pt]
        [--spacing 1 1 --roi_size 64 64] [--num_graders 4] [--seed 0]

(the grid of CT volumes' crops: the model's ``model.json``, else its config's ``infer_spacing`` /
``infer_roi_size``, or given), then ``python -m monai.bundle run training ... --dataset_name folder --dataset_dir
DATASET``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..bundle_utils import EXIT_INTERRUPTED, log_progress_to_stderr, quiet_optional_decoder
from .disk_format import DATALIST_NAME, DatasetError, atomic_dataset_dir, patient_level_split
from .progress import ScanProgress

__all__ = ["RATER_TAG_PREFIX", "export_rater_dataset", "main", "rated_images"]

logger = logging.getLogger(__name__)

RATER_TAG_PREFIX = "rater_"
DATASTORE_FILE = "datastore_v2.json"
EXPORT_VERSION = 1


def rated_images(studies: str | Path) -> dict[str, dict[str, Any]]:
    """The images of a MONAI Label local datastore that have raters' labels.

    Returns:
        ``{image id: {"image": path, "patient_id": str, "raters": [{"rater", "ts", "label": path}, ...]}}``, raters
        ordered by submission time (then name).

    Raises:
        DatasetError: no or unreadable ``datastore_v2.json``, or a listed image missing (a listed label file that
            is gone was removed through MONAI Label: left out, with a warning).
    """
    studies = Path(studies)
    config = studies / DATASTORE_FILE
    if not studies.is_dir():
        what = "is a file, not a folder" if studies.exists() else "does not exist"
        raise DatasetError(f"--studies {studies} {what}: give the folder a MONAI Label server ran on.")
    try:
        content = json.loads(config.read_text())
        objects = content["objects"]
    except FileNotFoundError:
        raise DatasetError(f"{config} does not exist: --studies must be the folder a MONAI Label server ran on.") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{config}: not a MONAI Label datastore file ({type(e).__name__}: {e}).") from None
    images_dir = studies / content.get("images_dir", ".")
    labels_dir = studies / content.get("labels_dir", "labels")
    try:
        return _rated_images(objects, config, images_dir, labels_dir)
    except (AttributeError, KeyError, TypeError) as e:  # entries of another shape than MONAI Label writes
        raise DatasetError(f"{config}: not a MONAI Label datastore file ({type(e).__name__}: {e}).") from None


def _rated_images(objects: Any, config: Path, images_dir: Path, labels_dir: Path) -> dict[str, dict[str, Any]]:
    """The images of the datastore's ``objects`` with at least one rater's label (see :func:`rated_images`)."""
    out: dict[str, dict[str, Any]] = {}
    for image_id, obj in sorted(objects.items()):
        raters = []
        for tag, label in (obj.get("labels") or {}).items():
            if not tag.startswith(RATER_TAG_PREFIX):
                continue
            info = label.get("info") or {}
            path = labels_dir / tag / f"{image_id}{label.get('ext', '.nii.gz')}"
            if not path.is_file():  # MONAI Label's DELETE /datastore/label removes the file, the entry stays a while
                logger.warning(f"{config}: label {tag} of image {image_id!r} lists {path}, which no longer exists "
                               "(removed): that rater's outline is left out.")
                continue
            raters.append({"rater": info.get("rater", tag[len(RATER_TAG_PREFIX):]), "ts": int(info.get("ts", 0)),
                           "label": path})
        if not raters:
            continue
        raters.sort(key=lambda r: (r["ts"], r["rater"]))
        image = images_dir / f"{image_id}{obj['image'].get('ext', '.nii.gz')}"
        if not image.is_file():
            raise DatasetError(f"{config}: image {image_id!r} lists {image}, which does not exist.")
        info = obj["image"].get("info") or {}
        patient = info.get("patient_id") or (info.get("PatientID") if info.get("PatientID") != "UNK" else None)
        out[image_id] = {"image": image, "patient_id": str(patient or image_id), "raters": raters}
    return out


def _split_counts(n: int, fractions: Sequence[float]) -> list[int]:
    """Patient counts per split: at least one training and one validation patient (the format needs both)."""
    if n < 2:
        raise DatasetError(f"{n} patient(s) with raters' labels: the export needs at least 2 (training and validation).")
    val = max(1, round(fractions[1] * n))
    test = round(fractions[2] * n) if n - val - round(fractions[2] * n) >= 1 else 0
    return [n - val - test, val, test]


def _case_id(image_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", image_id)


def _slice_cases(image_id: str, case: dict[str, Any]) -> list[dict[str, Any]]:
    """A rated 2-D image (a candidate crop) as it is: one case, its raters' masks checked against it."""
    try:
        img = nib.load(str(case["image"]))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # noqa: BLE001 -- reader errors name the file
        raise DatasetError(f"{case['image']}: not a readable NIfTI image ({type(e).__name__}: {e}).") from None
    if data.ndim not in (2, 3):
        raise DatasetError(f"{case['image']}: a {data.ndim}-D image; expected 2-D or 3-D.")
    masks = []
    for r in case["raters"]:
        try:
            m = np.asarray(nib.load(str(r["label"])).dataobj)
        except Exception as e:  # noqa: BLE001
            raise DatasetError(f"{r['label']}: not a readable NIfTI label ({type(e).__name__}: {e}).") from None
        if m.size != data.size or tuple(s for s in m.shape if s != 1) != tuple(s for s in data.shape if s != 1):
            raise DatasetError(f"{r['label']}: shape {list(m.shape)}, expected the image's {list(data.shape)}.")
        if not set(np.unique(m).tolist()) <= {0, 1}:
            raise DatasetError(f"{r['label']}: values other than 0 and 1.")
        masks.append(m.reshape(data.shape).astype(np.uint8))
    return [{"case_id": _case_id(image_id), "image": data, "masks": masks, "affine": img.affine, "meta": {}}]


def _volume_cases(image_id: str, case: dict[str, Any], grid: tuple[Sequence[float], Sequence[int]] | None
                  ) -> list[dict[str, Any]]:
    """A rated CT volume as the model's 2-D crops, one per lesion and axial slice (:mod:`.volume_crops`)."""
    if grid is None:
        raise DatasetError(f"{case['image']}: a CT volume; its raters' outlines are exported as 2-D crops on the "
                           "model's grid, which was not given (--model, or --spacing and --roi_size).")
    from .volume_crops import volume_crops

    crops = volume_crops(case["image"], [r["label"] for r in case["raters"]], *grid)
    if not crops:
        logger.warning(f"{case['image']}: no rater outlined anything in it (all masks empty): no crop exported.")
    cid = _case_id(image_id)
    return [{"case_id": f"{cid}_lesion{c.lesion}_slice{c.slice_index:03d}", "image": c.image, "masks": list(c.masks),
             "affine": c.affine, "meta": {"image_id": image_id, "lesion": c.lesion, "slice_index": c.slice_index,
                                          "centre_ras": [round(float(v), 3) for v in c.centre_ras]}}
            for c in crops]


def export_rater_dataset(
    studies: str | Path,
    out: str | Path,
    num_graders: int | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    spacing: Sequence[float] | None = None,
    roi_size: Sequence[int] | None = None,
) -> Path:
    """Write the raters' labels of a MONAI Label studies folder as a multi-grader dataset.

    A 2-D image (a candidate crop) is written as it is, one case; a CT volume as the model's 2-D crops, one case per
    lesion and axial slice it spans (:func:`~monai_probunet.data.volume_crops.volume_crops`, on the grid of
    ``spacing`` and ``roi_size``), each rater's mask on the slice a grader (empty where their outline misses it).

    Args:
        studies: the folder a MONAI Label server ran on (``--studies``), or a DICOMweb datastore's cache.
        out: the dataset folder; missing, empty or an earlier export (a folder holding anything else is refused).
            Written into a temporary sibling folder and renamed into place.
        num_graders: grader masks per case ``A``; default the most raters any image has. An image with more raters
            than ``A`` is refused.
        fractions: training / validation / test fractions of the patients (image info ``patient_id``, on DICOMweb
            ``PatientID``, else the image id); at least one training and one validation patient.
        seed: seed of the patient-level split.
        spacing: the model's in-plane pixel spacing in mm (2 values): needed for CT volumes.
        roi_size: the model's crop size in pixels (2 values): needed for CT volumes.

    Returns:
        the path of the written ``datalist.json``.

    Raises:
        DatasetError: one line naming the file and what was expected.
    """
    cases = rated_images(studies)
    if not cases:
        raise DatasetError(f"{studies}: no image has a rater's label (tags {RATER_TAG_PREFIX}<name>); nothing exported.")
    most = max(len(c["raters"]) for c in cases.values())
    a = most if num_graders is None else int(num_graders)
    if a < 1:
        raise DatasetError(f"num_graders must be >= 1, got {a}.")
    for image_id, case in cases.items():
        if len(case["raters"]) > a:
            raise DatasetError(f"image {image_id!r} has {len(case['raters'])} raters, more than num_graders={a}.")
    if (spacing is None) != (roi_size is None):
        raise DatasetError("spacing and roi_size: give both (the model's grid) or neither.")
    grid = None if spacing is None else (tuple(float(v) for v in spacing), tuple(int(v) for v in roi_size))
    from .volume_crops import is_volume  # torch and MONAI: once the datastore and the arguments are checked

    written: dict[str, list[dict[str, Any]]] = {}
    logger.info(f"{studies}: {len(cases)} rated image(s), {sum(len(c['raters']) for c in cases.values())} raters' "
                "labels")
    progress = ScanProgress(len(cases), "raters' labels", log=logger, unit="rated image", made="cases")
    try:
        for image_id, case in cases.items():
            try:
                shape = nib.load(str(case["image"])).shape
            except Exception as e:  # noqa: BLE001 -- reader errors name the file
                raise DatasetError(f"{case['image']}: not a readable NIfTI image ({type(e).__name__}: {e}).") from None
            written[image_id] = (_volume_cases(image_id, case, grid) if is_volume(shape)
                                 else _slice_cases(image_id, case))
            progress.update(sum(len(w) for w in written.values()))
    finally:
        progress.close()
    patients = {cases[i]["patient_id"] for i, w in written.items() if w}
    split_of = patient_level_split(sorted(patients), _split_counts(len(patients), fractions), seed)
    params: dict[str, Any] = {"studies": str(Path(studies).resolve()), "num_graders": a, "seed": seed,
                              "fractions": list(fractions)}
    if grid is not None:
        params.update(spacing=list(grid[0]), roi_size=list(grid[1]))
    datalist: dict[str, Any] = {
        "generator": {"name": "monailabel_raters", "version": EXPORT_VERSION, "params": params},
        "num_graders": a,
        "training": [], "validation": [], "test": [],
    }
    with atomic_dataset_dir(out, advice="Give a new or empty --out (or the folder of an earlier export).") as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for image_id, case in cases.items():
            for item in written[image_id]:
                cid, masks = item["case_id"], item["masks"]
                nib.save(nib.Nifti1Image(item["image"], item["affine"]), str(tmp / "images" / f"{cid}.nii.gz"))
                slots = [k % len(masks) for k in range(a)]
                labels = []
                for g, k in enumerate(slots):
                    name = f"labels/{cid}_g{g}.nii.gz"
                    nib.save(nib.Nifti1Image(masks[k], item["affine"]), str(tmp / name))
                    labels.append(name)
                datalist[split_of[case["patient_id"]]].append({
                    "image": f"images/{cid}.nii.gz", "label": labels, "patient_id": case["patient_id"],
                    "case_id": cid, **item["meta"],
                    "raters": [case["raters"][k]["rater"] for k in slots],
                    "rated_at": [case["raters"][k]["ts"] for k in slots],
                    "num_raters": len(masks),
                })
        (tmp / DATALIST_NAME).write_text(json.dumps(datalist, indent=1))
    return Path(out) / DATALIST_NAME


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m monai_probunet.data.raters",
        description="Export a MONAI Label studies folder's images and all their raters' labels as a multi-grader "
        "dataset (datalist.json, images/, labels/<case>_g<k>.nii.gz).",
    )
    parser.add_argument("--studies", required=True, help="the folder the MONAI Label server ran on")
    parser.add_argument("--out", required=True, help="dataset folder to write (new, empty, or an earlier export)")
    parser.add_argument("--num_graders", type=int, default=None, help="graders per case (default: most raters)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    parser.add_argument("--model", default=None, help="CT volumes: crop on this model's grid (its model.json, else "
                        "its bundle's configs/train.yaml or --config)")
    parser.add_argument("--config", nargs="+", default=None, help="bundle config(s) of --model's network")
    parser.add_argument("--spacing", type=float, nargs=2, default=None, help="CT volumes: in-plane mm of the crops")
    parser.add_argument("--roi_size", type=int, nargs=2, default=None, help="CT volumes: crop size in pixels")
    args = parser.parse_args(argv)
    log_progress_to_stderr("%(message)s")
    quiet_optional_decoder()
    try:
        spacing, roi_size = args.spacing, args.roi_size
        if args.model is not None and (spacing is None or roi_size is None):
            from ..model_loading import model_grid  # torch: only for a model's grid

            try:
                grid = model_grid(args.model, args.config)
            except (ValueError, FileNotFoundError) as e:
                raise DatasetError(f"--model {args.model}: {e}") from None
            spacing, roi_size = spacing or grid[0], roi_size or grid[1]
        path = export_rater_dataset(args.studies, args.out, num_graders=args.num_graders, seed=args.seed,
                                    spacing=spacing, roi_size=roi_size)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the export is written into a temporary folder, renamed into place at the end
        print(f"interrupted by Ctrl-C; nothing was written (--out {args.out} is as it was).", file=sys.stderr)
        return EXIT_INTERRUPTED
    content = json.loads(path.read_text())
    print(f"wrote {path}: " + ", ".join(f"{len(content[s])} {s}" for s in ("training", "validation", "test"))
          + f" cases, {content['num_graders']} graders each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
