"""Cityscapes -> the paper's class-flipping task (Kohl et al. 2018, Sec. 4.2 and Appendix H.2), in the on-disk format.

Input, the official download (``leftImg8bit_trainvaltest.zip`` + ``gtFine_trainvaltest.zip``) unpacked under one
``--root``::

    <root>/leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

For every image:

1. the label ids (0..33, -1 for the license plate) become the 19 *train ids* of the official benchmark, every other
   id the ignore label 255 (:data:`LABEL_ID_TO_TRAIN_ID`, the table of cityscapesScripts ``helpers/labels.py``);
2. the image is down-sampled to ``--size`` (default 256 x 512, the paper's) with PIL's anti-aliased bilinear filter,
   the label map with nearest neighbour;
3. the flip task: sidewalk -> 19 (p = 8/17), person -> 20 (7/17), car -> 21 (6/17), vegetation -> 22 (5/17),
   road -> 23 (4/17), one Bernoulli per class (:data:`monai_probunet.data.scenes32.FLIPS`); the image's *distinct*
   modes (the 32 patterns applied to its map; patterns that differ only in classes absent from the image give the
   same map and are merged, probabilities summed, see :func:`~monai_probunet.data.scenes32.distinct_modes`) with
   ``mode_probs`` and ``mode_patterns``; ``--num-graders`` label maps drawn from the same distribution (seeded per
   image by ``--seed`` and the image name).

Splits (the paper's): the official *train* images of every city except Darmstadt, Moenchengladbach and Ulm ->
``training`` (2,701 images); those three cities -> ``validation`` (274); the official *val* set -> ``test`` (500).
``patient_id`` is the city. Output (as ``monai_probunet.data.disk_format``, like the built-in ``scenes32``):
``images/<name>.nii.gz`` ``H x W x 3`` uint8 RGB (channel axis last), ``labels/<name>_g<k>.nii.gz`` and
``modes/<name>_m<j>.nii.gz`` ``H x W`` uint8, ``datalist.json``. Finished images are skipped on a restart with the
same settings (one small ``cases/<name>.json`` each). Then train with
``bundle/configs/scenes32.yaml`` and ``--dataset_name folder --dataset_dir <out>``.

Usage::

    python -m preprocessing.cityscapes --root /data/cityscapes --out /data/cityscapes_flip32 --workers 4
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from monai_probunet.bundle_utils import EXIT_INTERRUPTED, log_progress_to_stderr
from monai_probunet.data.disk_format import DATALIST_NAME, SPLITS, check_converter_output
from monai_probunet.data.progress import ScanProgress
from monai_probunet.data.scenes32 import (
    FLIP_PROBS,
    FLIPS,
    IGNORE_INDEX,
    distinct_modes,
    enumerate_modes,
    flip_task_metadata,
    write_flipped_case,
)

__all__ = [
    "LABEL_ID_TO_TRAIN_ID",
    "VALIDATION_CITIES",
    "CityscapesCase",
    "label_ids_to_train_ids",
    "find_cases",
    "convert_case",
    "convert_cityscapes",
    "main",
]

logger = logging.getLogger(__name__)

#: cityscapesScripts helpers/labels.py: (id, name, trainId); trainId 255 = ignored in evaluation
_LABELS: tuple[tuple[int, str, int], ...] = (
    (0, "unlabeled", 255),
    (1, "ego vehicle", 255),
    (2, "rectification border", 255),
    (3, "out of roi", 255),
    (4, "static", 255),
    (5, "dynamic", 255),
    (6, "ground", 255),
    (7, "road", 0),
    (8, "sidewalk", 1),
    (9, "parking", 255),
    (10, "rail track", 255),
    (11, "building", 2),
    (12, "wall", 3),
    (13, "fence", 4),
    (14, "guard rail", 255),
    (15, "bridge", 255),
    (16, "tunnel", 255),
    (17, "pole", 5),
    (18, "polegroup", 255),
    (19, "traffic light", 6),
    (20, "traffic sign", 7),
    (21, "vegetation", 8),
    (22, "terrain", 9),
    (23, "sky", 10),
    (24, "person", 11),
    (25, "rider", 12),
    (26, "car", 13),
    (27, "truck", 14),
    (28, "bus", 15),
    (29, "caravan", 255),
    (30, "trailer", 255),
    (31, "train", 16),
    (32, "motorcycle", 17),
    (33, "bicycle", 18),
    (-1, "license plate", 255),
)
#: label id -> train id (ids not listed, e.g. -1 license plate, map to 255)
LABEL_ID_TO_TRAIN_ID: dict[int, int] = {i: t for i, _, t in _LABELS}
#: the paper's internal validation set, held out of the official training set (274 images)
VALIDATION_CITIES: tuple[str, ...] = ("darmstadt", "monchengladbach", "ulm")

_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _id, _t in LABEL_ID_TO_TRAIN_ID.items():
    if 0 <= _id < 256:
        _LUT[_id] = _t


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes label ids to train ids (0..18) and 255 (ignore).

    Args:
        label_ids: ``H x W`` integer array of label ids (a ``*_gtFine_labelIds.png``).

    Returns:
        ``H x W`` uint8 train ids; any id outside the 19 evaluated classes becomes 255.
    """
    ids = np.asarray(label_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"label ids must be integers, got dtype {ids.dtype}.")
    out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
    valid = (ids >= 0) & (ids < 256)
    out[valid] = _LUT[ids[valid]]
    return out


class CityscapesCase(dict):
    """One image: ``{"name", "city", "source_split", "split", "image", "label"}`` (absolute source paths)."""


def find_cases(root: str | Path, validation_cities: Sequence[str] = VALIDATION_CITIES) -> list[CityscapesCase]:
    """All image / label-id pairs of the official train and val sets with the paper's split.

    Args:
        root: folder holding ``leftImg8bit/`` and ``gtFine/``.
        validation_cities: official-train cities held out as the validation split.

    Returns:
        Cases sorted by split and name: official train minus ``validation_cities`` -> ``"training"``, those cities
        -> ``"validation"``, official val -> ``"test"``.

    Raises:
        FileNotFoundError: a folder or an image's label file is missing, or no image is found.
    """
    root = Path(root)
    cases: list[CityscapesCase] = []
    for source in ("train", "val"):
        img_dir = root / "leftImg8bit" / source
        if not img_dir.is_dir():
            raise FileNotFoundError(
                f"{img_dir} does not exist: --root must hold leftImg8bit/{{train,val}}/<city>/*_leftImg8bit.png and "
                "gtFine/{train,val}/<city>/*_gtFine_labelIds.png (the official zips, unpacked)."
            )
        for city_dir in sorted(p for p in img_dir.iterdir() if p.is_dir()):
            for img in sorted(city_dir.glob("*_leftImg8bit.png")):
                stem = img.name[: -len("_leftImg8bit.png")]
                lab = root / "gtFine" / source / city_dir.name / f"{stem}_gtFine_labelIds.png"
                if not lab.is_file():
                    raise FileNotFoundError(f"label file {lab} for image {img} does not exist.")
                held_out = city_dir.name in validation_cities
                split = "test" if source == "val" else ("validation" if held_out else "training")
                case = CityscapesCase(name=stem, city=city_dir.name, source_split=source, split=split)
                case.update(image=str(img), label=str(lab))
                cases.append(case)
    if not cases:
        raise FileNotFoundError(f"no *_leftImg8bit.png images under {root / 'leftImg8bit'}.")
    train_cities = {c["city"] for c in cases if c["source_split"] == "train"}
    unknown = sorted(set(validation_cities) - train_cities)
    if unknown and not any(c["split"] == "validation" for c in cases):
        raise ValueError(f"--validation-cities {' '.join(validation_cities)}: no such city under "
                         f"{root / 'leftImg8bit' / 'train'} (its cities: {', '.join(sorted(train_cities))}), so the "
                         "validation split would be empty.")
    if unknown:
        logger.warning("--validation-cities: %s not under %s; validation holds the others", unknown, root)
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(cases, key=lambda c: (order[c["split"]], c["name"]))


def _settings(size: Sequence[int], num_graders: int, seed: int) -> dict[str, Any]:
    return {"size": [int(size[0]), int(size[1])], "num_graders": int(num_graders), "seed": int(seed),
            "flip_probs": list(FLIP_PROBS), "version": 1}  # fmt: skip


def convert_case(case: CityscapesCase, out_dir: str | Path, size: Sequence[int] = (256, 512), num_graders: int = 4,
                 seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Convert one image: down-sample, map to train ids, write image, grader maps and modes.

    Args:
        case: a :func:`find_cases` entry.
        out_dir: output dataset folder (``images/``, ``labels/``, ``modes/``, ``cases/`` are created).
        size: output ``(H, W)``.
        num_graders: flipped label maps drawn per image.
        seed: grader draws are seeded by ``(seed, crc32(name))``.

    Returns:
        The datalist entry (paths relative to ``out_dir``), also written to ``cases/<name>.json``.
    """
    out_dir = Path(out_dir)
    h, w = int(size[0]), int(size[1])
    with Image.open(case["image"]) as im:
        image = np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.uint8)
    with Image.open(case["label"]) as lb:
        ids = np.asarray(lb)
    if ids.ndim != 2:
        raise ValueError(f"{case['label']}: expected a single-channel label-id image, got shape {ids.shape}.")
    train_ids = label_ids_to_train_ids(ids)
    label = np.asarray(Image.fromarray(train_ids).resize((w, h), Image.NEAREST), dtype=np.uint8)
    modes, mode_probs, mode_patterns = distinct_modes(label)
    probs = np.array([p for _, p in enumerate_modes(FLIP_PROBS)])
    rng = np.random.default_rng([int(seed), zlib.crc32(case["name"].encode())])
    draws = rng.choice(len(probs), size=num_graders, p=probs / probs.sum())
    name = case["name"]
    for sub in ("images", "labels", "modes", "cases"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    item = write_flipped_case(out_dir, name, case["city"], image, modes, mode_probs, mode_patterns, draws)
    item.update(source_split=case["source_split"], split=case["split"])
    manifest = out_dir / "cases" / f"{name}.json"
    tmp = manifest.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"settings": _settings(size, num_graders, seed), "item": item}))
    os.replace(tmp, manifest)  # written last: a manifest means the case is complete
    return item


def _done(case: CityscapesCase, out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    path = out_dir / "cases" / f"{case['name']}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data["item"] if data.get("settings") == settings else None


def _convert_star(args: tuple) -> dict[str, Any]:
    return convert_case(*args)


def convert_cityscapes(
    root: str | Path,
    out_dir: str | Path,
    size: Sequence[int] = (256, 512),
    num_graders: int = 4,
    seed: int = 0,
    workers: int = 1,
    validation_cities: Sequence[str] = VALIDATION_CITIES,
) -> Path:
    """Convert the Cityscapes train and val sets into the flip task; return the path of ``datalist.json``.

    Args:
        root: the Cityscapes folder (``leftImg8bit/``, ``gtFine/``).
        out_dir: output dataset folder (resumable: finished images with the same settings are skipped).
        size: output ``(H, W)`` (paper: 256 x 512).
        num_graders: flipped label maps drawn per image.
        seed: seed of the grader draws.
        workers: parallel processes (1 = in this process).
        validation_cities: official-train cities held out as validation (paper: Darmstadt, Moenchengladbach, Ulm).
    """
    if len(size) != 2 or min(size) < 8 or num_graders < 1:
        raise ValueError(f"size must be (H, W) >= 8 and num_graders >= 1, got {list(size)} and {num_graders}.")
    entries = {"images", "labels", "modes", "cases"}
    check_converter_output(Path(out_dir), str(out_dir), "preprocessing.cityscapes", entries)
    out_dir = Path(out_dir)
    cases = find_cases(root, validation_cities)
    settings = _settings(size, num_graders, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    items: dict[str, dict[str, Any]] = {}
    todo = []
    for c in cases:
        done = _done(c, out_dir, settings)
        if done is None:
            todo.append(c)
        else:
            items[c["name"]] = done
    logger.info("%d images (%d already converted) -> %s", len(cases), len(cases) - len(todo), out_dir)
    args = [(c, out_dir, tuple(size), num_graders, seed) for c in todo]
    progress = ScanProgress(len(args), "cityscapes", log=logger, unit="image", made="converted", leave=True)
    try:
        if workers <= 1:
            for i, a in enumerate(args):
                items[a[0]["name"]] = _convert_star(a)
                progress.update(i + 1)
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_ignore_ctrl_c) as pool:
                try:
                    for i, item in enumerate(pool.map(_convert_star, args, chunksize=8)):
                        items[item["case_id"]] = item
                        progress.update(i + 1)
                except KeyboardInterrupt:  # the cases being converted finish, the others are not started
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        progress.close()
    datalist: dict[str, Any] = {
        "name": "cityscapes_flip32",
        "description": f"Cityscapes at {size[0]}x{size[1]}, train ids + 255 ignore, 5 classes flipped at random "
        "(Kohl et al. 2018)",
        "generator": {"name": "preprocessing.cityscapes", "params": settings},
        "num_graders": num_graders,
        **flip_task_metadata(),
        "validation_cities": list(validation_cities),
        **{s: [] for s in SPLITS},
    }
    for c in cases:
        datalist[c["split"]].append(items[c["name"]])
    path = out_dir / DATALIST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(datalist, indent=1))
    os.replace(tmp, path)
    logger.info("datalist: %s", {s: len(datalist[s]) for s in SPLITS})
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m preprocessing.cityscapes", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="Cityscapes folder holding leftImg8bit/ and gtFine/")
    p.add_argument("--out", required=True, help="output dataset folder (resumable)")
    p.add_argument("--size", type=int, nargs=2, default=[256, 512], metavar=("H", "W"), help="output size")
    p.add_argument("--num-graders", type=int, default=4, help="flipped label maps drawn per image")
    p.add_argument("--seed", type=int, default=0, help="seed of the grader draws")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (1 = in this process)")
    p.add_argument(
        "--validation-cities", nargs="+", default=list(VALIDATION_CITIES), metavar="CITY",
        help="official-train cities held out as the validation split",
    )  # fmt: skip
    return p


def _ignore_ctrl_c() -> None:
    """Pool worker start-up: Ctrl-C is the parent's, which lets the cases being converted finish."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0, 2 for bad input, 130 for Ctrl-C)."""
    args = _parser().parse_args(argv)
    log_progress_to_stderr("%(asctime)s %(levelname)s %(message)s")
    try:
        path = convert_cityscapes(
            args.root, args.out, args.size, args.num_graders, args.seed, args.workers, args.validation_cities
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preprocessing.cityscapes: interrupted by Ctrl-C; the same command continues where it stopped (the "
              "cases converted are kept in --out).", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
