"""Lesions near the image border: GED16 and presence when the model's field reaches past the image's edge.

A click near the border of an image puts part of the model's field beyond it, and the inference path fills that part
(:class:`~monai_probunet.inference_transforms.ModelGridd`, ``infer_padding_mode``): ``edge`` repeats the border pixels
(the default), ``constant`` puts air there. Each test image of the bundle's dataset (the lesion at the crop's centre)
is cut at ``--band`` pixels from one side (the sides taken in turn), the cut part filled as the inference path fills
it (MONAI's ``BorderPad``), and the hypotheses and the readers' masks are scored by GED16 on the part left inside the
image. Printed per band width and fill: GED16, the share of hypotheses showing a lesion and the readers' share.

    python benchmarks/border_lesions.py                                  # the shipped bundle/models/model.pt
    python benchmarks/border_lesions.py --model path/to/model.pt --band 16 24
"""

from __future__ import annotations

import argparse
import warnings

import torch
from bundle_args import add_model_arguments, bundle_data
from monai.transforms import BorderPad

from monai_probunet.inference import load_model
from monai_probunet.inference_transforms import PADDING_MODES
from monai_probunet.metrics import generalized_energy_distance


def cut(image: torch.Tensor, side: int, band: int, mode: str) -> torch.Tensor:
    """The ``1 x H x W`` image with ``band`` pixels at ``side`` (0: top, 1: bottom, 2: left, 3: right) beyond the
    image's edge, filled as :class:`ModelGridd` fills them."""
    h, w = image.shape[1:]
    keep = [slice(None), slice(band, h) if side == 0 else slice(0, h - band) if side == 1 else slice(None),
            slice(band, w) if side == 2 else slice(0, w - band) if side == 3 else slice(None)]
    border = [0, 0, 0, 0]  # MONAI's order: top, bottom, left, right
    border[side] = band
    kwargs = {"value": 0.0} if mode == "constant" else {}
    return BorderPad(spatial_border=border, mode=mode, **kwargs)(image[tuple(keep)])


def outside(shape: tuple[int, int], side: int, band: int) -> torch.Tensor:
    """Bool ``H x W``: the pixels beyond the image's edge."""
    mask = torch.zeros(shape, dtype=torch.bool)
    index = {0: (slice(0, band), slice(None)), 1: (slice(shape[0] - band, None), slice(None)),
             2: (slice(None), slice(0, band)), 3: (slice(None), slice(shape[1] - band, None))}[side]
    mask[index] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--band", type=int, nargs="+", default=[16, 24],
                        help="pixels of the field beyond the image's edge (the lesion's centre lies 32 - band pixels "
                        "inside it in the default 64-pixel field)")
    args = parser.parse_args()
    from monai_probunet.data import load_datalist

    datalist, transform = bundle_data(args.config)
    model, _ = load_model(args.model, args.config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        items = [transform(c) for c in load_datalist(datalist, "test")]
    images = torch.stack([torch.as_tensor(i["image"]) for i in items]).float()  # N x 1 x H x W
    labels = torch.stack([torch.as_tensor(i["label"]) for i in items]).long()  # N x A x H x W
    print(f"model {args.model}: {len(items)} test images, {args.samples} hypotheses each, seed {args.seed}")
    for band, mode in [(0, "none")] + [(b, m) for b in args.band for m in PADDING_MODES]:
        x, y = images.clone(), labels.clone()
        gone = torch.zeros((len(x), *x.shape[2:]), dtype=torch.bool)
        if band:
            for n in range(len(x)):
                x[n] = cut(x[n], n % 4, band, mode)
                gone[n] = outside(tuple(x.shape[2:]), n % 4, band)
        y[gone[:, None].expand_as(y)] = 0
        geds, shown = [], []
        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for start in range(0, len(x), 32):
                samples = model.sample(x[start : start + 32], args.samples, generator=generator).argmax(2)
                samples[gone[start : start + 32, None].expand_as(samples)] = 0  # dropped, as the inference path does
                geds.append(generalized_energy_distance(samples, y[start : start + 32]).ged)
                shown.append(samples.flatten(2).gt(0).any(2).float().mean(1))
        readers = y.flatten(2).gt(0).any(2).float().mean(1)
        label = "no border" if not band else f"{band:2d} px beyond the edge, {mode}"
        print(f"{label:36s} GED16 {torch.cat(geds).mean():.3f}; hypotheses showing a lesion "
              f"{torch.cat(shown).mean():.3f} (readers {readers.mean():.3f})", flush=True)


if __name__ == "__main__":
    main()
