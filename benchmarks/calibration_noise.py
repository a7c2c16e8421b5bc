"""How noisy is the Fig. 5 calibration analysis itself? The oracle's mode-frequency r and modes hit over sampling seeds.

The oracle draws the true modes at their true probabilities, so any shortfall of its Pearson r (true mode probability
vs sampled frequency) from 1 and any missed mode is sampling noise of the evaluation, not of a model. Prints, for each
number of samples per image, the oracle's r and modes hit over several seeds on a split of the built-in ``scenes32``
data: the floor a perfectly calibrated model would reach (measured: S = 16 gives r 0.975-0.988 and one seed of five
misses a mode; S = 128 gives 0.993-0.996 and 32/32, hence ``calibration_samples: 128`` in ``scenes32.yaml``).

    python benchmarks/calibration_noise.py [--samples 16 128] [--seeds 5] [--dataset-dir bundle/data/scenes32]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from monai.transforms import Compose

from monai_probunet.calibration import evaluate_calibration
from monai_probunet.data import load_datalist
from monai_probunet.metrics.oracle import ORACLE

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [str(REPO / "bundle" / "configs" / "train.yaml"), str(REPO / "bundle" / "configs" / "scenes32.yaml")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[16, 128], help="samples per image to compare")
    parser.add_argument("--seeds", type=int, default=5, help="sampling seeds 0 .. N-1")
    parser.add_argument("--split", default="test")
    parser.add_argument("--dataset-dir", type=Path, default=REPO / "bundle" / "data" / "scenes32",
                        help="where the scenes32 data is (generated there with scenes32.yaml's parameters if absent)")
    args = parser.parse_args()

    config = ConfigParser()
    config.read_config(CONFIGS)
    config.update({"dataset_dir": str(args.dataset_dir), "bundle_root": str(REPO / "bundle")})
    transform = Compose(config.get_parsed_content("load_transforms"))
    items = load_datalist(config.get_parsed_content("datalist"), args.split)
    print(f"oracle on the {args.split} split ({len(items)} images), seeds 0..{args.seeds - 1}")
    print("| samples per image | Pearson r (min / mean / max) | modes hit per seed |")
    print("|---|---|---|")
    for s in args.samples:
        rs, hits = [], []
        for seed in range(args.seeds):
            cal = evaluate_calibration(ORACLE, items, transform, num_samples=s, seed=seed).mode_calibration()
            rs.append(cal.pearson[0])
            hits.append(f"{cal.modes_hit}/{len(cal.patterns)}")
        print(f"| {s} | {min(rs):.3f} / {np.mean(rs):.3f} / {max(rs):.3f} | {', '.join(hits)} |")


if __name__ == "__main__":
    main()
