"""Lesion presence by lesion size: how often a model's hypotheses show a lesion against how often the readers drew one.

For every image of a split of the bundle's dataset (default: ``lidc_phantom``'s validation split, as ``train.yaml``
generates it), S seeded hypotheses are drawn (the image as the bundle's validation preprocessing loads it); the
images are grouped by the largest reader outline (mm² at the dataset's spacing) and each group prints the share of
hypotheses that show a lesion beside the share of reader masks that do. A calibrated model matches the readers in
every group; one that under-calls large lesions falls behind in the last groups.

Two more columns tell where an under-call comes from (models with a posterior net): how often the decoder draws a
lesion from the posterior mean of a non-empty reader mask (can the decoder draw it at all?) and the mean
``KL(Q || P)`` of those masks (how far the prior is from where the readers' lesions are encoded). Below the table:
how much the prior's mean moves from image to image, in units of its own standard deviation (about 0: the prior is
the same for every image, and every image gets the same share of hypotheses with a lesion, whatever it shows).

    python benchmarks/presence_by_size.py                         # the shipped bundle/models/model.pt
    python benchmarks/presence_by_size.py --model path/to/model.pt --split test
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from bundle_args import add_model_arguments, bundle_data

from monai_probunet.inference import load_model
from monai_probunet.metrics import presence_probability

BINS_MM2 = (0.0, 50.0, 150.0, float("inf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--split", default="validation", choices=("training", "validation", "test"))
    args = parser.parse_args()
    from monai_probunet.data import load_datalist

    datalist, transform = bundle_data(args.config)
    cases = [c for c in load_datalist(datalist, args.split) if c.get("readers_drawn", 1) > 0]
    model, settings = load_model(args.model, args.config)
    pixel_mm2 = float(np.prod(settings["spacing"]))
    shown, drawn, largest, rebuilt, kl, prior_mu, prior_sd = [], [], [], [], [], [], []
    has_posterior = hasattr(model, "posterior_net") and hasattr(model, "prior_moments")
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for start in range(0, len(cases), 32):
            items = [transform(c) for c in cases[start : start + 32]]
            image = torch.stack([torch.as_tensor(i["image"]) for i in items]).float()
            with torch.no_grad():
                samples = model.sample(image, args.samples).argmax(2)  # B x S x H x W
                if has_posterior:
                    labels = torch.stack([torch.as_tensor(i["label"]) for i in items]).long()  # B x A x H x W
                    present = labels.flatten(2).gt(0).any(2)  # B x A
                    shows = torch.stack(
                        [model.reconstruct(image, labels[:, a : a + 1], True).argmax(1).flatten(1).gt(0).any(1)
                         for a in range(labels.shape[1])], 1).float()
                    kls = torch.stack([model.kl(image, labels[:, a : a + 1]) for a in range(labels.shape[1])], 1)
                    rebuilt += [float(r[p].mean()) if p.any() else float("nan") for r, p in zip(shows, present)]
                    kl += [float(k[p].mean()) if p.any() else float("nan") for k, p in zip(kls, present)]
                    mu, log_sigma = model.prior_moments(image)
                    prior_mu.append(mu)
                    prior_sd.append(log_sigma.exp())
            shown += presence_probability(samples).tolist()
            for i in items:
                masks = torch.as_tensor(i["label"]).flatten(1).gt(0)  # A x P
                drawn.append(float(masks.any(1).float().mean()))
                largest.append(float(masks.sum(1).max()) * pixel_mm2)
    shown_a, drawn_a, largest_a = map(np.asarray, (shown, drawn, largest))
    print(f"model {args.model}, {args.split} split, {len(cases)} lesion images, {args.samples} hypotheses each")
    header = "largest reader outline | images | hypotheses showing a lesion | reader masks showing one"
    print(header + (" | posterior mean draws it | KL(Q || P) of those masks" if has_posterior else ""))
    for lo, hi in zip(BINS_MM2[:-1], BINS_MM2[1:]):
        sel = (largest_a >= lo) & (largest_a < hi)
        if sel.any():
            name = f">= {lo:g} mm²" if np.isinf(hi) else f"{lo:g}-{hi:g} mm²"
            row = f"{name:>22} | {int(sel.sum()):6d} | {shown_a[sel].mean():27.2f} | {drawn_a[sel].mean():24.2f}"
            if has_posterior:
                row += f" | {np.nanmean(np.asarray(rebuilt)[sel]):22.2f} | {np.nanmean(np.asarray(kl)[sel]):.2f}"
            print(row)
    if has_posterior:
        mu, sd = torch.cat(prior_mu), torch.cat(prior_sd)
        spread = (mu.std(0) / sd.mean(0)).tolist()
        print("prior mean's spread across images / its standard deviation, per latent dimension: "
              + " ".join(f"{v:.2f}" for v in spread))


if __name__ == "__main__":
    main()
