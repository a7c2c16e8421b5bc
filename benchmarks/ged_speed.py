"""GED for 2,000 cases x 16 samples x 4 graders at 128x128 (issue #2 benchmark; target <= 1 s on 2 cores).

Side by side: the vectorised implementation (one Gram matrix of one-hot maps per chunk of images) and a direct
per-pair loop (what evaluation scripts of the reference implementations do), timed on a subset and scaled.

    python benchmarks/ged_speed.py [--cases 2000] [--loop-cases 20]
"""

from __future__ import annotations

import argparse
import time

import torch

from monai_probunet.metrics import generalized_energy_distance


def _iou_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    union = (x | y).sum()
    return 0.0 if union == 0 else 1.0 - float((x & y).sum()) / float(union)


def ged_loop(samples: torch.Tensor, graders: torch.Tensor) -> torch.Tensor:
    out = []
    for s, y in zip(samples, graders):
        d_sy = sum(_iou_distance(a, b) for a in s for b in y) / (len(s) * len(y))
        d_ss = sum(_iou_distance(a, b) for a in s for b in s) / len(s) ** 2
        d_yy = sum(_iou_distance(a, b) for a in y for b in y) / len(y) ** 2
        out.append(2 * d_sy - d_ss - d_yy)
    return torch.tensor(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--loop-cases", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(args.cases, 16, 128, 128, generator=g) > 0.7
    graders = torch.rand(args.cases, 4, 128, 128, generator=g) > 0.7
    generalized_energy_distance(samples[:8], graders[:8])  # warm-up
    t0 = time.perf_counter()
    ged = generalized_energy_distance(samples, graders).ged
    vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = ged_loop(samples[: args.loop_cases], graders[: args.loop_cases])
    loop = (time.perf_counter() - t0) * args.cases / args.loop_cases
    assert torch.allclose(ref, ged[: args.loop_cases], atol=1e-5)
    print(f"vectorised: {vec:.2f} s for {args.cases} x 16 x 4 at 128x128 (target <= 1 s)")
    print(f"per-pair loop: {loop:.1f} s (scaled from {args.loop_cases} cases); speed-up {loop / vec:.0f}x")


if __name__ == "__main__":
    main()
