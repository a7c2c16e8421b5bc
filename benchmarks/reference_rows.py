"""Reference rows for every GED comparison table: what a model must beat, scored with the project's own GED.

For each image of a split (the A grader masks of its datalist entry) the rows are

- the single answers of :mod:`monai_probunet.metrics.references` repeated S times (the evaluation's
  ``summary.json`` holds the same under ``references``): ``majority_vote>=k (x S)``, the pixel-wise vote of the
  graders (a pixel is lesion where >= k of the A graders drew it), the best *single* answer a deterministic model could
  give (d_ss = 0); with several classes ``pixelwise_vote (x S)``, each pixel's most frequent grader label, and
  ``most_probable_mode (x S)`` where the datalist knows the true modes (also scored against them: ``... [Eq. 7]``);
  ``empty (x S)``: nothing anywhere;
- ``graders (S draws)``: S draws (seeded, uniform, with replacement) from the image's own grader masks: what a perfect
  sampler of the grader distribution would score (the oracle);
- ``graders, shown by size (S draws)`` (binary masks): each draw shows a lesion with the probability that a grader
  drew one at that lesion size (the largest grader outline, in bins of :data:`SIZE_BINS` mm^2, fitted on a training
  split), and then one of the image's non-empty grader masks: the outlines are perfect, the presence is what the
  lesion's size alone tells. A bound for a model whose outlines were perfect and whose presence followed the size.

With several classes (``classes``, e.g. the street scenes' ten switchable ones) sampled pixels where the graders have
``ignore_index`` count for no class, as in the evaluation.

A model's samples pay for themselves only where its GED_S is below the majority-vote rows.

    python benchmarks/reference_rows.py --datalist bundle/data/lidc_phantom/datalist.json --split test
    python benchmarks/reference_rows.py --datalist bundle/data/scenes32/datalist.json \\
        --classes 0 1 8 11 13 19 20 21 22 23 --ignore-index 255
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from user_errors import ArgumentParser, ScriptInputError, positive_int, run_main

from monai_probunet.data import load_datalist
from monai_probunet.metrics import generalized_energy_distance
from monai_probunet.metrics.known_mixture import mask_ignored
from monai_probunet.metrics.references import reference_geds

__all__ = ["SIZE_BINS", "grader_masks", "label_maps", "largest_outline_mm2", "presence_by_size", "reference_rows"]

#: lesion-size bins (mm^2, the largest grader outline) of the ``shown by size`` row
SIZE_BINS = (0.0, 10.0, 20.0, 35.0, 60.0, 100.0, 150.0, 250.0, float("inf"))


def grader_masks(item: dict[str, Any]) -> np.ndarray:
    """``A x H x W`` uint8: the grader masks of a loaded datalist entry."""
    return np.stack([np.asarray(nib.load(p).dataobj) > 0 for p in item["label"]]).astype(np.uint8)


def label_maps(paths: list[str]) -> np.ndarray:
    """``N x H x W`` int64: the label maps at ``paths`` (grader masks or modes), labels as stored."""
    return np.stack([np.asarray(nib.load(p).dataobj) for p in paths]).astype(np.int64)


def largest_outline_mm2(item: dict[str, Any], y: np.ndarray) -> float:
    """The largest of the grader outlines ``y`` (``A x H x W``) of a loaded datalist entry, in mm^2."""
    zooms = nib.load(item["label"][0]).header.get_zooms()[:2]
    return float(y.reshape(y.shape[0], -1).sum(1).max()) * float(np.prod(zooms))


def presence_by_size(datalist: str | Path, split: str = "training") -> np.ndarray:
    """The share of graders who drew a lesion, per :data:`SIZE_BINS` bin of the largest grader outline, over the
    split's images where any grader drew one (a bin without images gets the overall share)."""
    drawn = np.zeros(len(SIZE_BINS) - 1)
    total = np.zeros(len(SIZE_BINS) - 1)
    for item in load_datalist(datalist, split):
        y = grader_masks(item)
        if not y.any():
            continue
        b = int(np.digitize(largest_outline_mm2(item, y), SIZE_BINS)) - 1
        drawn[b] += y.reshape(y.shape[0], -1).any(1).sum()
        total[b] += y.shape[0]
    overall = drawn.sum() / max(total.sum(), 1)
    return np.where(total > 0, drawn / np.maximum(total, 1), overall)


def reference_rows(
    datalist: str | Path,
    split: str = "test",
    num_samples: int = 16,
    seed: int = 0,
    size_fit: str | Path | None = None,
    classes: Sequence[int] = (1,),
    ignore_index: int | None = None,
) -> dict[str, float]:
    """Mean GED_S over the split's images of the single answers (:mod:`monai_probunet.metrics.references`, as the
    evaluation scores them) and of the grader draws.

    Args:
        datalist: a ``datalist.json`` in the project's on-disk format.
        split: ``training``, ``validation`` or ``test``.
        num_samples: S, the number of predictions per image (the table's S).
        seed: seed of the grader draws.
        size_fit: the ``datalist.json`` whose training split fits the ``shown by size`` row (default: ``datalist``;
            binary masks only).
        classes: the classes whose IoU the GED averages (the evaluation's); ``(1,)``: binary lesion masks.
        ignore_index: the graders' label of unannotated pixels (``None``: none), masked in the predictions.

    Returns:
        ``{row name: mean GED_S}`` (``images``: the number of images scored); a row scored against known modes too
        has a twin named ``... [Eq. 7]``.

    Raises:
        ScriptInputError: a class of ``classes`` that no grader mask of the split holds (every row would score 0).
    """
    items = load_datalist(datalist, split)
    binary = tuple(classes) == (1,)
    rng = np.random.default_rng(seed)
    shown = presence_by_size(datalist if size_fit is None else size_fit) if binary else None
    sized_rng = np.random.default_rng([seed, 1])  # its own stream: the other rows' draws stay as they were
    sums: dict[str, float] = {}
    present: set[int] = set()  # the labels the split's grader masks hold

    def add(name: str, value: float) -> None:
        sums[name] = sums.get(name, 0.0) + value

    for item in items:
        y = label_maps(item["label"])  # A x H x W
        present.update(int(v) for v in np.unique(y))
        targets = torch.as_tensor(y[None])
        modes = probs = None
        if "modes" in item and "mode_probs" in item:
            modes = torch.as_tensor(label_maps(item["modes"]))
            probs = torch.as_tensor(item["mode_probs"], dtype=torch.float64)
        for key, (ged, eq7) in reference_geds(torch.as_tensor(y), classes, ignore_index, modes, probs).items():
            add(f"{key} (x{num_samples})", ged)
            if eq7 is not None and not binary:
                add(f"{key} (x{num_samples}) [Eq. 7]", eq7)
        draws = torch.as_tensor(y[rng.integers(0, y.shape[0], num_samples)][None])
        masked = draws if ignore_index is None else mask_ignored(draws, targets, ignore_index)
        ged = generalized_energy_distance(masked, targets, classes=classes).ged
        add(f"graders ({num_samples} draws)", float(ged[0]))
        if not binary:
            continue
        drawn = [m for m in y if m.any()]
        if drawn:
            p = shown[int(np.digitize(largest_outline_mm2(item, y), SIZE_BINS)) - 1]
            picks = [drawn[sized_rng.integers(len(drawn))] if sized_rng.random() < p else np.zeros_like(y[0])
                     for _ in range(num_samples)]  # fmt: skip
        else:
            picks = [np.zeros_like(y[0])] * num_samples
        sized = torch.as_tensor(np.stack(picks)[None])
        add(f"graders, shown by size ({num_samples} draws)", float(generalized_energy_distance(sized, targets).ged[0]))
    present.discard(ignore_index)
    absent = [c for c in classes if c not in present]
    if absent:
        held = ", ".join(str(c) for c in sorted(present)) or "none"
        raise ScriptInputError(
            f"--classes {' '.join(map(str, absent))}: no grader mask of the {split} split of {datalist} holds "
            f"{'this class' if len(absent) == 1 else 'these classes'} (the masks hold classes {held}); "
            "expected classes the masks hold."
        )
    out = {k: v / len(items) for k, v in sums.items()}
    out["images"] = len(items)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datalist", required=True, help="datalist.json of the dataset")
    parser.add_argument("--split", default="test", choices=["training", "validation", "test"])
    parser.add_argument("--num-samples", type=positive_int, default=16, help="S (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument(
        "--size-fit", default=None,
        help="datalist.json whose training split fits the 'shown by size' row (default: --datalist)",
    )
    parser.add_argument("--classes", type=int, nargs="+", default=[1], help="classes the GED scores (default: 1)")
    parser.add_argument("--ignore-index", type=int, default=None, help="the graders' label of unannotated pixels")
    args = parser.parse_args(argv)
    if not Path(args.datalist).is_file():
        print(f"error: --datalist {args.datalist} does not exist (expected a datalist.json).", file=sys.stderr)
        return 2
    if args.size_fit is not None and not Path(args.size_fit).is_file():
        print(f"error: --size-fit {args.size_fit} does not exist (expected a datalist.json).", file=sys.stderr)
        return 2
    rows = reference_rows(args.datalist, args.split, args.num_samples, args.seed, args.size_fit, args.classes,
                          args.ignore_index)  # fmt: skip
    print(f"{args.split} split, {rows['images']} images, GED_{args.num_samples} (lower is better)")
    for name, value in rows.items():
        if name != "images":
            print(f"  {name:<42s} {value:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    run_main(main)
