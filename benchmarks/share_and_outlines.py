"""How often a model's hypotheses show a lesion, how their outlines agree, and what each costs in the GED.

For one image, let r be the share of readers who drew a lesion, s the share of the S hypotheses that show one, a the
mean IoU of a shown lesion and a reader's (over all such pairs), b the mean IoU of two shown lesions (over all ordered
pairs, each hypothesis with itself included, as the GED's V-statistic does). With d = 1 - IoU and two empty masks at
distance 0 the squared GED is exactly

    GED = 2 r - 2 s r (1 + a) + s^2 (1 + b) - E[d(Y, Y')]

(:func:`ged_from_terms`; the last term is the readers' own spread, the same for every model). At fixed a and b it is
smallest at s = r (1 + a) / (1 + b): where the hypotheses' outlines agree with each other more than with the readers'
(b > a), the best share lies below the readers'. For every model the script prints the means of s, r, a, b, that best
share and GED16; then, for each model after the first, the model part ``-2 s r (1 + a) + s^2 (1 + b)`` (averaged over
the images) with the first model's shares and its own outlines and the other way round, so the difference between two
models splits into what their shares and what their outlines do.

    python benchmarks/share_and_outlines.py \\
        --model default bundle/models/model.pt bundle/configs/train.yaml \\
        --model fixed_prior bundle/eval/compare/models/fixed_prior/model.pt bundle/configs/train.yaml \\
            bundle/configs/baselines/fixed_prior.yaml

The images are the first model's configs' ``datalist`` split (``--split``, default test), preprocessed as its
validation does; hypotheses are drawn with a generator seeded by ``--seed`` in the precision ``auto`` picks.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset

from monai_probunet.data import load_datalist
from monai_probunet.engines import autocast_context
from monai_probunet.metrics.ged import generalized_energy_distance
from monai_probunet.model_loading import load_model
from monai_probunet.networks import hypotheses_to_labels

REPO = Path(__file__).resolve().parents[1]


def share_terms(samples: torch.Tensor, readers: torch.Tensor) -> tuple[float, float, float, float]:
    """``(s, r, a, b)`` of one image: ``samples`` ``S x *spatial`` and ``readers`` ``A x *spatial`` label maps
    (foreground: label > 0). ``a`` is 0 where no hypothesis or no reader shows a lesion, ``b`` 0 where none shows one
    (their terms are then multiplied by 0)."""
    hyps = samples.flatten(1) > 0
    reads = readers.flatten(1) > 0
    shown, drawn = hyps[hyps.any(dim=1)].float(), reads[reads.any(dim=1)].float()
    s, r = len(shown) / len(hyps), len(drawn) / len(reads)

    def mean_iou(x: torch.Tensor, y: torch.Tensor) -> float:
        if not len(x) or not len(y):
            return 0.0
        inter = x @ y.T
        union = x.sum(1, keepdim=True) + y.sum(1) - inter
        return float((inter / union).mean())

    return s, r, mean_iou(shown, drawn), mean_iou(shown, shown)


def ged_from_terms(s: float, r: float, a: float, b: float, d_yy: float) -> float:
    """The squared GED of one image from its :func:`share_terms` and the readers' ``E[d(Y, Y')]``."""
    return 2 * r - 2 * s * r * (1 + a) + s**2 * (1 + b) - d_yy


def model_part(s: np.ndarray, r: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the images of the part of :func:`ged_from_terms` that depends on the model."""
    return float(np.mean(-2 * s * r * (1 + a) + s**2 * (1 + b)))


def swapped_part(shares: np.ndarray, outlines: np.ndarray) -> float:
    """:func:`model_part` with the shares ``s`` of one model's rows and the outline terms ``a, b`` of another's (its
    own where the other shows no lesion on an image)."""
    has = outlines[:, 0] > 0
    a = np.where(has, outlines[:, 2], shares[:, 2])
    b = np.where(has, outlines[:, 3], shares[:, 3])
    return model_part(shares[:, 0], shares[:, 1], a, b)


def split_dataset(configs: list[str], split: str) -> Dataset:
    """The ``split`` of the configs' ``datalist``, preprocessed as their validation does."""
    parser = ConfigParser()
    parser.read_config(configs)
    parser["device"] = "$torch.device('cpu')"
    items = load_datalist(parser.get_parsed_content("datalist"), split)
    return Dataset(items, transform=parser.get_parsed_content("validate#preprocessing"))


def measure(name: str, model_path: str, configs: list[str], dataset: Dataset, samples: int, seed: int) -> np.ndarray:
    """``N x 5`` rows ``(s, r, a, b, GED)`` of the dataset's images for one model."""
    model, _ = load_model(model_path, configs)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=32):
            with autocast_context("auto", "cpu"):
                logits = model.sample(batch["image"], samples, generator=generator)
            labels, readers = hypotheses_to_labels(logits.float()), batch["label"].long()
            ged = generalized_energy_distance(labels, readers).ged
            rows += [(*share_terms(labels[i], readers[i]), float(ged[i])) for i in range(len(labels))]
    print(f"{name}: {len(rows)} images scored", file=sys.stderr)
    return np.asarray(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", action="append", required=True, metavar="NAME MODEL CONFIG",
                   help="a name, a model.pt and the bundle configs that build it (repeat for each model)")  # fmt: skip
    p.add_argument("--split", default="test")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if any(len(m) < 3 for m in args.model):
        p.error("--model: expected NAME MODEL CONFIG [CONFIG ...]")
    dataset = split_dataset(args.model[0][2:], args.split)
    results = {m[0]: measure(m[0], m[1], m[2:], dataset, args.samples, args.seed) for m in args.model}
    print(f"{args.split} split, S = {args.samples}, sampling seed {args.seed}\n")
    print("| model | images | shown share s (std) | corr(s, r) | readers' share r | a | b "
          "| best share r (1 + a) / (1 + b) | GED |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        s, r, a, b, ged = rows.T
        best = np.mean(np.where(s > 0, r * (1 + a) / (1 + b), r))
        corr = np.corrcoef(s, r)[0, 1] if s.std() > 0 and r.std() > 0 else float("nan")
        print(f"| {name} | {len(rows)} | {s.mean():.3f} ({s.std():.3f}) | {corr:.2f} | {r.mean():.3f} | "
              f"{a[s * r > 0].mean():.3f} | "
              f"{b[s > 0].mean():.3f} | {best:.3f} | {ged.mean():.3f} |")  # fmt: skip
    names = list(results)
    if len(names) > 1:
        first = results[names[0]]
        print(f"\nmodel part -2 s r (1 + a) + s^2 (1 + b), mean over images (lower is better; {names[0]} first):\n")
        print("| model | its own | its shares, the first's outlines | the first's shares, its outlines |")
        print("|---|---|---|---|")
        for name in names[1:]:
            other = results[name]
            own = model_part(other[:, 0], other[:, 1], other[:, 2], other[:, 3])
            print(f"| {name} | {own:.4f} | {swapped_part(other, first):.4f} | {swapped_part(first, other):.4f} |")
        print(f"| {names[0]} | {model_part(first[:, 0], first[:, 1], first[:, 2], first[:, 3]):.4f} | | |")


if __name__ == "__main__":
    main()
