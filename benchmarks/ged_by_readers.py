"""Where a model's GED16 comes from: per number of readers who outlined the lesion.

Reads the evaluation's ``per_image.csv`` (``run evaluating`` with ``evaluate.yaml`` writes it to ``--output_dir``) and
the dataset's ``datalist.json``. For the images of the split grouped by k = the readers (of 4) who drew a lesion, it
prints the mean GED at S = 16, the share of hypotheses showing a lesion (ideally k / 4, which the readers' majority
vote does not need to guess: it reads the readers' masks) and, per split, the quartiles of the largest reader
outline in mm^2, so that a split whose k = 4 lesions are smaller than the training split's shows as such.

It also splits the GED in two. A model whose hypotheses show a lesion in a share p of the draws, each time with an
outline equal to every reader's, scores GED_S = 2 (p - k/4)^2 exactly (d = 1 - IoU: d_ss = 2p(1-p),
d_yy = 2q(1-q), d_sy = p(1-q) + (1-p)q with q = k/4). That is the *presence part*: what the model's presence alone
costs. The rest of its GED is the *outline part*: what its outlines cost beside perfect ones (it can be negative
where the readers' outlines vary, since varied outlines also raise d_ss).

    python benchmarks/ged_by_readers.py --per-image DIR/per_image.csv
    python benchmarks/ged_by_readers.py --per-image A/per_image.csv B/per_image.csv --split test
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np
from reference_rows import grader_masks, largest_outline_mm2
from user_errors import ArgumentParser, ScriptInputError, positive_int, run_main

from monai_probunet.data import SPLITS, load_datalist, validate_datalist
from monai_probunet.data.disk_format import DatasetError

REPO = Path(__file__).resolve().parents[1]
#: the columns of the evaluation's ``per_image.csv`` this script reads
PER_IMAGE_COLUMNS = ("model", "split", "case_id", "S", "ged", "presence_count")


def readers_drawn(datalist: Path, split: str) -> dict[str, int]:
    """``{case id: readers who drew a lesion}`` of a split (the image file name without ``.nii.gz``).

    Raises:
        DatasetError: ``datalist`` is not a datalist, has no such split, or its cases do not say how many readers
            drew a lesion (``readers_drawn``, as the ``lidc_phantom`` datalist does).
    """
    content = validate_datalist(datalist)
    if split not in content:
        raise DatasetError(f"--datalist {datalist} has no {split!r} split.")
    if not all(isinstance(c.get("readers_drawn"), int) for c in content[split]):
        raise DatasetError(
            f"--datalist {datalist}: expected every {split} case to hold 'readers_drawn' (the readers who drew a "
            "lesion, as in the lidc_phantom datalist)."
        )
    return {Path(c["image"]).name.removesuffix(".nii.gz"): c["readers_drawn"] for c in content[split]}


def read_per_image(path: str | Path) -> list[dict[str, str]]:
    """The rows of an evaluation's ``per_image.csv``.

    Raises:
        ScriptInputError: the file lacks a column of :data:`PER_IMAGE_COLUMNS` (e.g. a ``summary.json`` given).
    """
    try:
        with Path(path).open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in PER_IMAGE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ScriptInputError(
                    f"--per-image {path}: expected the evaluation's per_image.csv (columns "
                    f"{', '.join(PER_IMAGE_COLUMNS)}), but it has no column {', '.join(missing)}."
                )
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ScriptInputError(f"--per-image {path}: expected the evaluation's per_image.csv, cannot read it: {e}")


def presence_part(row: dict, k: int, samples: int, graders: int = 4) -> float:
    """``2 (p - q)^2``: the GED of a model showing a lesion in the same share p of its hypotheses as this row, with
    outlines equal to every reader's (q = k / graders: the share of readers who drew one)."""
    return 2.0 * (float(row["presence_count"]) / samples - k / graders) ** 2


def largest_outlines(datalist: Path, split: str) -> dict[int, list[float]]:
    """``{k: [largest reader outline of each image, mm^2]}`` of a split's lesion images."""
    out: dict[int, list[float]] = defaultdict(list)
    for item in load_datalist(datalist, split):
        y = grader_masks(item)
        if y.any():
            out[int(y.reshape(y.shape[0], -1).any(1).sum())].append(largest_outline_mm2(item, y))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-image", nargs="+", required=True, help="per_image.csv of one or more evaluations")
    parser.add_argument("--datalist", default=str(REPO / "bundle" / "data" / "lidc_phantom" / "datalist.json"))
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--samples", type=positive_int, default=16, help="S of the rows to read")
    args = parser.parse_args(argv)
    datalist = Path(args.datalist)
    if not datalist.is_file():
        parser.exit(2, f"{datalist}: no datalist.json (run the training command once to generate the dataset)\n")
    k_of = readers_drawn(datalist, args.split)
    missing = [p for p in args.per_image if not Path(p).is_file()]
    if missing:
        parser.exit(2, f"{missing[0]}: no such per_image.csv (run evaluating with evaluate.yaml writes it)\n")
    for path in args.per_image:
        rows = [r for r in read_per_image(path) if r["model"] != "oracle" and r["split"] == args.split
                and int(r["S"]) == args.samples and r["case_id"] in k_of]  # fmt: skip
        if not rows:
            parser.exit(2, f"{path}: no rows of split {args.split!r} at S = {args.samples} for this datalist\n")
        groups: dict[int, list[dict]] = defaultdict(list)
        for r in rows:
            groups[k_of[r["case_id"]]].append(r)
        total = np.mean([float(r["ged"]) for r in rows])
        part = np.mean([presence_part(r, k_of[r["case_id"]], args.samples) for r in rows])
        print(f"{rows[0]['model']} ({path}): GED{args.samples} {total:.3f} over {len(rows)} images "
              f"(presence part {part:.3f}, outline part {total - part:.3f})")  # fmt: skip
        for k in sorted(groups):
            g = groups[k]
            ged = np.mean([float(r["ged"]) for r in g])
            shown = np.mean([float(r["presence_count"]) for r in g]) / args.samples
            part = np.mean([presence_part(r, k, args.samples) for r in g])
            print(f"  {k} of 4 readers: {len(g):3d} images, GED {ged:.3f}, hypotheses showing a lesion {shown:.2f} "
                  f"(readers {k / 4:.2f}); presence part {part:.3f}, outline part {ged - part:.3f}")
    for split in dict.fromkeys(["training", args.split]):
        sizes = largest_outlines(datalist, split)
        print(f"largest reader outline, {split} split (mm^2, quartiles): " + "; ".join(
            f"{k} of 4: {np.percentile(v, 25):.0f} / {np.median(v):.0f} / {np.percentile(v, 75):.0f}"
            for k, v in sorted(sizes.items())))  # fmt: skip
    return 0


if __name__ == "__main__":
    run_main(main)
