"""Export a MONAI Label studies folder's images and their raters' labels in the project's on-disk format.

The MONAI Label app (``apps/monailabel``) keeps each rater's outline of an image under the label tag
``rater_<name>`` of its local datastore (``<studies>/datastore_v2.json``, ``<studies>/labels/rater_<name>/``), with
the rater and the time (``ts``, seconds) in the label's info. :func:`export_rater_dataset` writes every image that
at least one rater outlined, and its raters' masks as graders ``_g0.._g{A-1}`` ordered by submission time
(:mod:`monai_probunet.data.disk_format`), with patient-level splits. A rater who reviewed an image and drew nothing
submitted an empty mask: an empty grader. An image with fewer raters than ``A`` fills the remaining grader slots by
repeating its own raters in turn (never with empty masks, which would claim "no lesion"); the entry's ``raters``
list says who each slot is. Command::

    python -m monai_probunet.data.raters --studies STUDIES --out DATASET [--num_graders 4] [--seed 0]

then ``python -m monai.bundle run training ... --dataset_name folder --dataset_dir DATASET``.
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

from .disk_format import DATALIST_NAME, DatasetError, atomic_dataset_dir, patient_level_split

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
        out[image_id] = {"image": image, "patient_id": str(info.get("patient_id", image_id)), "raters": raters}
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


def export_rater_dataset(
    studies: str | Path,
    out: str | Path,
    num_graders: int | None = None,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> Path:
    """Write the raters' labels of a MONAI Label studies folder as a multi-grader dataset.

    Args:
        studies: the folder a MONAI Label server ran on (``--studies``).
        out: the dataset folder; missing, empty or an earlier export (a folder holding anything else is refused).
            Written into a temporary sibling folder and renamed into place.
        num_graders: grader masks per case ``A``; default the most raters any image has. An image with more raters
            than ``A`` is refused.
        fractions: training / validation / test fractions of the patients (image info ``patient_id``, else the image
            id); at least one training and one validation patient.
        seed: seed of the patient-level split.

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
    split_of = patient_level_split([c["patient_id"] for c in cases.values()],
                                   _split_counts(len({c["patient_id"] for c in cases.values()}), fractions), seed)
    datalist: dict[str, Any] = {
        "generator": {"name": "monailabel_raters", "version": EXPORT_VERSION,
                      "params": {"studies": str(Path(studies).resolve()), "num_graders": a, "seed": seed,
                                 "fractions": list(fractions)}},
        "num_graders": a,
        "training": [], "validation": [], "test": [],
    }
    with atomic_dataset_dir(out, advice="Give a new or empty --out (or the folder of an earlier export).") as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        for image_id, case in cases.items():
            cid = _case_id(image_id)
            try:
                img = nib.load(str(case["image"]))
                data = np.asarray(img.dataobj, dtype=np.float32)
            except Exception as e:  # noqa: BLE001 -- reader errors name the file
                raise DatasetError(f"{case['image']}: not a readable NIfTI image ({type(e).__name__}: {e}).") from None
            if data.ndim not in (2, 3):
                raise DatasetError(f"{case['image']}: a {data.ndim}-D image; expected 2-D or 3-D.")
            nib.save(nib.Nifti1Image(data, img.affine), str(tmp / "images" / f"{cid}.nii.gz"))
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
            slots = [k % len(masks) for k in range(a)]
            labels = []
            for g, k in enumerate(slots):
                name = f"labels/{cid}_g{g}.nii.gz"
                nib.save(nib.Nifti1Image(masks[k], img.affine), str(tmp / name))
                labels.append(name)
            datalist[split_of[case["patient_id"]]].append({
                "image": f"images/{cid}.nii.gz", "label": labels, "patient_id": case["patient_id"], "case_id": cid,
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
    args = parser.parse_args(argv)
    try:
        path = export_rater_dataset(args.studies, args.out, num_graders=args.num_graders, seed=args.seed)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    content = json.loads(path.read_text())
    print(f"wrote {path}: " + ", ".join(f"{len(content[s])} {s}" for s in ("training", "validation", "test"))
          + f" cases, {content['num_graders']} graders each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
