"""False lesions on real, lesion-free CT: the share of clicks on a grid where a model reports a lesion.

The held-out real CT that ships with pydicom (never used for training or tuning): ``CT_small.dcm`` (a chest slice:
vertebra, aorta, muscle, fat, lung bases; 128 x 128 at 0.66 mm) and the head slices ``693_J2KI.dcm`` and
``J2K_pixelrep_mismatch.dcm`` (512 x 512 at 0.48 / 0.43 mm). None shows a lung nodule. Every ``--step-mm`` along
both axes the model is clicked (through the inference API, as a user calls it), except outside the body (a 5 x 5
neighbourhood below -950 HU). A click counts as a false lesion where more than ``--max-presence`` of the S hypotheses
show a lesion, or where any outline is larger than ``--max-area-mm2`` (the targets of
``tests/test_real_ct_negatives.py``, which checks the ten named sites of :data:`SITES` on the shipped model).
``--sites`` reports those ten sites instead, for any model: how many stay empty at sampling seeds 0-3 (the README's
"real-CT sites empty").

    python benchmarks/real_ct_negatives.py                                  # the shipped bundle/models/model.pt
    python benchmarks/real_ct_negatives.py --model path/to/model.pt --config bundle/configs/train.yaml [OVERRIDE.yaml]
    python benchmarks/real_ct_negatives.py --padding-mode edge constant   # the field beyond the border: both fills
    python benchmarks/real_ct_negatives.py --sites --model M --config bundle/configs/train.yaml OVERRIDE.yaml
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from pydicom.data import get_testdata_file

from monai_probunet.inference import load_ct, load_model, predict_hypotheses
from monai_probunet.inference_transforms import PADDING_MODES

REPO = Path(__file__).resolve().parents[1]
FILES = ("CT_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm")
#: the named lesion-free sites of ``CT_small.dcm``: (x, y) voxel of the loaded array (column, row of the DICOM pixel
#: data) and the HU range expected there, a check that the location shows what its name says
SITES: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "vertebral body (bone)": ((56, 24), (100, 1200)),
    "posterior arch (bone)": ((60, 66), (300, 1500)),
    "rib head (bone)": ((16, 68), (150, 1500)),
    "spinal canal": ((58, 46), (-20, 100)),
    "paraspinal muscle (chest wall)": ((30, 100), (0, 120)),
    "subcutaneous fat (chest wall)": ((60, 120), (-200, 0)),
    "descending aorta (mediastinum)": ((96, 10), (60, 400)),
    "para-aortic fat (mediastinum)": ((84, 30), (-200, 0)),
    "left lung base (lung)": ((8, 28), (-1000, -500)),
    "right lung base (lung)": ((120, 30), (-1000, -500)),
}
#: a site or click stays empty where at most this share of the hypotheses shows a lesion and no outline is larger
MAX_PRESENCE = 0.2
MAX_AREA_MM2 = 50.0
SITE_SEEDS = (0, 1, 2, 3)


def grid_clicks(image: np.ndarray, spacing_mm: float, step_mm: float) -> list[tuple[int, int]]:
    """Voxel (x, y) clicks every ``step_mm`` inside the body of a ``(1, X, Y)`` HU slice."""
    step = max(int(round(step_mm / spacing_mm)), 1)
    clicks = []
    for x in range(step // 2, image.shape[1], step):
        for y in range(step // 2, image.shape[2], step):
            if float(image[0, max(x - 2, 0) : x + 3, max(y - 2, 0) : y + 3].mean()) >= -950.0:
                clicks.append((x, y))
    return clicks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "bundle" / "models" / "model.pt"))
    parser.add_argument("--config", nargs="+", default=[str(REPO / "bundle" / "configs" / "train.yaml")])
    parser.add_argument("--step-mm", type=float, default=16.0)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-presence", type=float, default=MAX_PRESENCE)
    parser.add_argument("--max-area-mm2", type=float, default=MAX_AREA_MM2)
    parser.add_argument("--sites", action="store_true",
                        help="the ten named sites of CT_small.dcm at sampling seeds 0-3 instead of the grid")
    parser.add_argument("--seeds", type=int, default=1,
                        help="sampling seeds 0..K-1 (every click of one seed draws the same latent noise, as the CLI's "
                        "default seed does): the rates are averaged over them, the spread printed")
    parser.add_argument("--padding-mode", nargs="+", choices=PADDING_MODES, default=["edge"],
                        help="how the model's field is filled beyond the image border (several: one report each, "
                        "same clicks and seeds)")
    args = parser.parse_args()
    torch.manual_seed(0)
    try:
        model, settings = load_model(args.model, args.config)
    except (FileNotFoundError, ValueError) as e:  # a missing or unreadable --model / --config
        parser.exit(2, f"error: --model {args.model} / --config: {e}\n")
    if args.sites:
        report_sites(args, model, settings)
        return
    print(f"model {args.model}: {args.samples} hypotheses per click, a click every {args.step_mm:g} mm")
    for padding_mode in args.padding_mode:
        if len(args.padding_mode) > 1:
            print(f"padding beyond the image border: {padding_mode}")
        report(args, model, settings, padding_mode)


def click_hypotheses(
    model: torch.nn.Module, settings: dict, image, click: tuple[int, int], seed: int, num_samples: int = 16,
    padding_mode: str = "edge",
):
    """The hypotheses (:class:`~monai_probunet.hypotheses.Hypotheses`) of one click (voxel ``(x, y)``) on ``image``
    (as :func:`~monai_probunet.inference.load_ct` returns it) with one sampling seed, as a user's click gets them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no fitted presence threshold needed here: the share is checked
        return predict_hypotheses(
            image, click, model, spacing=settings["spacing"], roi_size=settings["roi_size"],
            hu_window=settings["hu_window"], num_samples=num_samples, seed=seed, padding_mode=padding_mode,
        )


def report_sites(args: argparse.Namespace, model: torch.nn.Module, settings: dict) -> None:
    """Print, per named site, the hypotheses showing a lesion and the largest outline over the seeds; then how many
    sites stay empty at every seed."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image, _ = load_ct(get_testdata_file("CT_small.dcm"))
    empty = 0
    print(f"model {args.model}: {args.samples} hypotheses per click, sampling seeds {SITE_SEEDS[0]}-{SITE_SEEDS[-1]}")
    for site in SITES:
        hyps = [click_hypotheses(model, settings, image, SITES[site][0], seed, args.samples) for seed in SITE_SEEDS]
        counts = [h.presence_count for h in hyps]
        largest = max(float(h.areas_mm2.max()) for h in hyps)
        ok = max(counts) <= args.max_presence * args.samples and largest <= args.max_area_mm2
        empty += ok
        print(f"  {site:32s} {min(counts)}-{max(counts)} of {args.samples}, largest outline {largest:.0f} mm^2"
              f"{'' if ok else '  LESION'}")  # fmt: skip
    print(f"named sites empty: {empty} / {len(SITES)}")


def report(args: argparse.Namespace, model: torch.nn.Module, settings: dict, padding_mode: str) -> None:
    """Click the grid of every file with each sampling seed and print the false-lesion rates."""
    seeds = range(max(args.seeds, 1))
    per_seed_bad = np.zeros(len(seeds))
    total = 0
    for name in FILES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image, _ = load_ct(get_testdata_file(name))
        spacing = float(np.linalg.norm(np.asarray(image.affine)[:3, 0]))  # mm per voxel along x
        presence, areas = [], []  # clicks x seeds
        for click in grid_clicks(np.asarray(image), spacing, args.step_mm):
            row_p, row_a = [], []
            for seed in seeds:
                h = click_hypotheses(model, settings, image, click, seed, args.samples, padding_mode)
                row_p.append(h.presence_probability)
                row_a.append(float(h.areas_mm2.max()))
            presence.append(row_p)
            areas.append(row_a)
        p, a = np.asarray(presence), np.asarray(areas)
        bad = (p > args.max_presence) | (a > args.max_area_mm2)
        total += len(p)
        per_seed_bad += bad.sum(axis=0)
        print(
            f"{name:27s} {len(p):4d} clicks: false lesions {bad.mean():.0%}; mean presence "
            f"{p.mean():.2f}; presence > {args.max_presence:g} at {(p > args.max_presence).mean():.0%}; an outline > "
            f"{args.max_area_mm2:g} mm^2 at {(a > args.max_area_mm2).mean():.0%}"
        )
    rates = per_seed_bad / max(total, 1)
    spread = f" (seeds 0-{len(seeds) - 1}: {rates.min():.0%} to {rates.max():.0%})" if len(seeds) > 1 else ""
    print(f"all {total} clicks: false lesions {rates.mean():.0%}{spread}")


if __name__ == "__main__":
    main()
