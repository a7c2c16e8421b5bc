"""GED and false lesions of one model by the prior's sampling temperature (``prior_temperature`` in train.yaml).

Hypotheses are drawn as ``z = mu + t * sigma * eps``; t = 1 is the paper's sampling. For each t this prints the
squared GED of S hypotheses on the validation and test splits of the bundle's dataset (default ``lidc_phantom``, as
``train.yaml`` generates it), and, on the training split's lesion-free crops (all reader masks empty), the share of
hypotheses that outline something and the share of crops where more than 20 % do. Every t sees the same images and
the same standard-normal draws, so the columns differ only by t. Wider draws reach lesions that more readers drew
and cost false outlines where there is no lesion: the script shows both sides.

    python benchmarks/prior_temperature.py                        # the shipped bundle/models/model.pt
    python benchmarks/prior_temperature.py --model DIR/model.pt --temperatures 1 1.25 1.5 1.75 2

False lesions on held-out real CT at a temperature: ``benchmarks/real_ct_negatives.py --config C`` with a copy of
train.yaml whose ``prior_temperature`` is t.
"""

from __future__ import annotations

import argparse
import sys
import warnings

import numpy as np
import torch
from bundle_args import add_model_arguments, bundle_data

from monai_probunet.inference import load_model
from monai_probunet.metrics import presence_probability
from monai_probunet.networks import hypotheses_to_labels


class _AtTemperature(torch.nn.Module):
    """``network.sample`` with the network's prior temperature set to ``t`` for the call."""

    def __init__(self, network: torch.nn.Module, t: float) -> None:
        super().__init__()
        self.network, self.t = network, t

    def sample(self, image: torch.Tensor, num_samples: int = 16, generator: torch.Generator | None = None):
        self.network.prior_temperature.fill_(self.t)
        return self.network.sample(image, num_samples, generator=generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 1.25, 1.5, 1.75, 2.0])
    args = parser.parse_args()
    from monai_probunet.data import load_datalist
    from monai_probunet.evaluation import evaluate

    datalist, transform = bundle_data(args.config)
    model, _ = load_model(args.model, args.config)
    if not isinstance(getattr(model, "prior_temperature", None), torch.Tensor):
        print(f"error: {args.model} is a {type(model).__name__}, which has no prior temperature.", file=sys.stderr)
        sys.exit(2)
    temps = [float(t) for t in args.temperatures]
    print(f"model {args.model}, {args.samples} hypotheses per image, seed {args.seed}")
    print("temperature | " + " | ".join(f"{t:g}" for t in temps))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for split in ("validation", "test"):
            items = load_datalist(datalist, split)
            with torch.no_grad():
                models = {t: _AtTemperature(model, t) for t in temps}
                res = evaluate(models, items, transform, sample_counts=(args.samples,), seed=args.seed, oracle=False,
                               classes=(1,), split=split)  # fmt: skip
            ged = [float(np.nanmean(res[t].values["ged"][:, -1])) for t in temps]
            print(f"{split} GED{args.samples} ({len(items)} images) | " + " | ".join(f"{g:.4f}" for g in ged))
        empty = []
        for case in load_datalist(datalist, "training"):
            item = transform(dict(case))
            if not torch.as_tensor(item["label"]).any():
                empty.append(torch.as_tensor(item["image"]).float())
        if empty:
            images = torch.stack(empty)
            shares = []
            for t in temps:
                model.prior_temperature.fill_(t)
                generator = torch.Generator().manual_seed(args.seed)
                with torch.no_grad():
                    presence = torch.cat([
                        presence_probability(hypotheses_to_labels(model.sample(images[i : i + 32], args.samples,
                                                                               generator=generator)))
                        for i in range(0, len(images), 32)])  # fmt: skip
                shares.append((float(presence.mean()), float((presence > 0.2).float().mean())))
            print(f"lesion-free training crops ({len(images)}): hypotheses outlining something | "
                  + " | ".join(f"{a:.3f}" for a, _ in shares))  # fmt: skip
            print("  crops where more than 20 % do | " + " | ".join(f"{b:.3f}" for _, b in shares))


if __name__ == "__main__":
    main()
