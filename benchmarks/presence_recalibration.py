"""Would the model's hypotheses score better if the share showing a lesion followed the lesion's size?

An experiment, not an inference option. For every lesion image the model draws ``--draws`` hypotheses; the median
area of those that show a lesion estimates the lesion's size. On the fitting dataset's training split the readers'
share who drew a lesion is averaged per bin of that estimate (``reference_rows.SIZE_BINS``). Then S = 16 hypotheses
are scored (the project's GED against the image's readers): the first 16 draws as they are, and 16 recalibrated
ones, that bin's share of them showing one of the drawn outlines (at random) and the rest empty. An image where no
draw shows a lesion stays empty. The gap between the two rows is what the prior's presence costs beside its
outlines (``ged_by_readers.py`` splits the same way, ``presence_cues.py`` gives the bounds).

    python benchmarks/presence_recalibration.py                                         # the built-in test split
    python benchmarks/presence_recalibration.py --model M --datalist DIR/datalist.json   # e.g. heldout_patients.py's
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from bundle_args import add_model_arguments, bundle_data
from reference_rows import SIZE_BINS

from monai_probunet.data import load_datalist
from monai_probunet.inference import load_model
from monai_probunet.metrics import generalized_energy_distance


def draw(model, transform, items: list, draws: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(hypotheses draws x H x W, reader masks A x H x W)]`` of the lesion images among ``items``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for start in range(0, len(items), 32):
            loaded = [transform(c) for c in items[start : start + 32]]
            image = torch.stack([torch.as_tensor(i["image"]) for i in loaded]).float()
            samples = model.sample(image, draws, generator=gen).argmax(2)  # B x draws x H x W
            for s, i in zip(samples, loaded):
                y = torch.as_tensor(i["label"]).long()
                if y.any():
                    out.append((s, y))
    return out


def size_bin(hypotheses: torch.Tensor) -> int:
    """The :data:`SIZE_BINS` bin of the median area (pixels) of the hypotheses showing a lesion; -1 if none does."""
    areas = hypotheses.flatten(1).gt(0).sum(1)
    return int(np.digitize(float(areas[areas > 0].float().median()), SIZE_BINS)) - 1 if areas.any() else -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--datalist", default=None, help="datalist.json to score (default: the config's dataset)")
    parser.add_argument("--split", default="test", choices=("validation", "test"))
    parser.add_argument("--fit-images", type=int, default=600, help="training images that fit the shares")
    parser.add_argument("--draws", type=int, default=64, help="hypotheses drawn per image to estimate the size")
    args = parser.parse_args()
    if args.datalist is not None and not Path(args.datalist).is_file():
        parser.exit(2, f"--datalist {args.datalist}: no such datalist.json\n")
    if args.draws < args.samples:
        parser.exit(2, f"--draws {args.draws}: expected at least --samples ({args.samples})\n")
    datalist, transform = bundle_data(args.config)
    model, _ = load_model(args.model, args.config)
    fit = draw(model, transform, load_datalist(datalist, "training")[: args.fit_images], args.draws, args.seed)
    shares: dict[int, list[float]] = {}
    for s, y in fit:
        shares.setdefault(size_bin(s), []).append(float(y.flatten(1).gt(0).any(1).float().mean()))
    share = {b: float(np.mean(v)) for b, v in shares.items()}
    print(f"readers' share per bin of the median drawn area ({len(fit)} training lesion images; bin -1: none drawn): "
          + ", ".join(f"{b}: {share[b]:.2f}" for b in sorted(share)))  # fmt: skip
    scored = draw(model, transform, load_datalist(args.datalist or datalist, args.split), args.draws, args.seed + 1)
    rng = np.random.default_rng(args.seed)
    plain, recalibrated = [], []
    for s, y in scored:
        plain.append(float(generalized_energy_distance(s[None, : args.samples], y[None]).ged[0]))
        shown = s[s.flatten(1).gt(0).any(1)]
        n = round(args.samples * share.get(size_bin(s), 0.0)) if len(shown) else 0
        picks = [shown[rng.integers(len(shown))] for _ in range(n)] + [torch.zeros_like(s[0])] * (args.samples - n)
        recalibrated.append(float(generalized_energy_distance(torch.stack(picks)[None], y[None]).ged[0]))
    print(f"{args.datalist or datalist}, {args.split} split, {len(scored)} lesion images, GED{args.samples}: "
          f"as drawn {np.mean(plain):.3f}, recalibrated to the size's share {np.mean(recalibrated):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
