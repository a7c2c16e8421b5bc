"""How often a model calls a lesion when the click is on a lung vessel of a phantom chest slice.

A vessel cut across is a round soft-tissue spot in lung, which is how a small nodule looks on one slice. For each of
``--scenes`` fresh phantom slices (:func:`~monai_probunet.data.chest_phantom.draw_chest_scene`, seeds
``[--seed, k]``, none of them in any dataset) one lung vessel cross-section is drawn at random, an 80 mm window around
it is rendered at 0.5 mm, and the model is clicked at the vessel's centre (through the inference API, as a user
calls it). Per vessel radius the script prints the mean share of hypotheses showing a lesion and the share of clicks
where it is above ``--max-presence`` (the target of ``tests/test_real_ct_negatives.py``).

    python benchmarks/vessel_clicks.py                                  # the shipped bundle/models/model.pt
    python benchmarks/vessel_clicks.py --model path/to/model.pt --scenes 200
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from bundle_args import add_model_arguments
from monai.data import MetaTensor

from monai_probunet.data.chest_phantom import draw_chest_scene, render_chest, vessel_sections
from monai_probunet.inference import load_model, predict_hypotheses

WINDOW = 160  # pixels of 0.5 mm
GROUPS = ((0.0, 1.5), (1.5, np.inf))  # vessel radius, mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.set_defaults(seed=12345)  # the phantom slices' seed (their draws lie apart from any dataset's)
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--max-presence", type=float, default=0.2)
    args = parser.parse_args()
    model, settings = load_model(args.model, args.config)
    presence: dict[tuple[float, float], list[float]] = {g: [] for g in GROUPS}
    affine = torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0], dtype=torch.float64))
    for k in range(args.scenes):
        rng = np.random.default_rng([args.seed, k])
        scene = draw_chest_scene(rng)
        sections = vessel_sections(scene)
        if not sections:
            continue
        _, x, y, radius = sections[int(rng.integers(len(sections)))][:4]
        window = render_chest(scene, rng, (x, y), (WINDOW, WINDOW), 0.5)  # rows = y, columns = x
        image = MetaTensor(torch.as_tensor(window.T[None].copy(), dtype=torch.float32), affine=affine)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fraction is read, not the fitted presence rule
            h = predict_hypotheses(
                image, (WINDOW // 2, WINDOW // 2), model, spacing=settings["spacing"],
                roi_size=settings["roi_size"], hu_window=settings["hu_window"], num_samples=args.samples, seed=k,
            )
        group = next(g for g in GROUPS if g[0] <= radius < g[1])
        presence[group].append(h.presence_probability)
    print(f"model {args.model}: clicks on the centre of a lung vessel, {args.scenes} phantom slices, "
          f"{args.samples} hypotheses each")  # fmt: skip
    for (lo, hi), values in presence.items():
        if values:
            v = np.asarray(values)
            size = f"{lo:g}-{hi:g} mm" if np.isfinite(hi) else f">= {lo:g} mm"
            print(f"  radius {size}: {len(v):3d} vessels; hypotheses showing a lesion {v.mean():.2f}; "
                  f"clicks above {args.max_presence:g}: {np.mean(v > args.max_presence):.0%}")


if __name__ == "__main__":
    main()
