"""GED for 2,000 cases x 16 samples x 4 graders at 128x128 (target <= 1 s and >= 50x the per-pair loop).

Side by side in one run: the vectorised implementation (bit-packed masks, popcount intersections, chunks sized to
the L2 cache, one per thread) and a direct per-pair loop (what evaluation scripts of the reference implementations
do), the loop timed on a subset of cases and scaled per case (every case has the same number of pairs). Optionally
also the float32 one-hot Gram path that the GPU uses, run on the CPU.

    python benchmarks/ged_speed.py [--cases 2000] [--loop-cases 20] [--onehot]
"""

from __future__ import annotations

import argparse
import time

import torch

from monai_probunet.engines.precision import cpu_bf16_flags, cpu_model_name
from monai_probunet.metrics import generalized_energy_distance
from monai_probunet.metrics.distances import _cache_budget, _onehot_counts, iou_distance_from_counts


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


def ged_onehot(samples: torch.Tensor, graders: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """Squared GED from float32 one-hot Gram matrices (the GPU path), in chunks of images."""
    out, n = [], samples.shape[1]
    for i in range(0, samples.shape[0], chunk):
        d = iou_distance_from_counts(*_onehot_counts(torch.cat([samples[i : i + chunk], graders[i : i + chunk]], 1), None, (1,)))
        out.append(2 * d[:, :n, n:].mean((1, 2)) - d[:, :n, :n].mean((1, 2)) - d[:, n:, n:].mean((1, 2)))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--loop-cases", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="vectorised timing: best of this many runs")
    parser.add_argument("--onehot", action="store_true", help="also time the float32 one-hot Gram path")
    args = parser.parse_args()
    flags = cpu_bf16_flags()
    print(f"CPU: {cpu_model_name()}; native bf16: {'yes (' + '/'.join(flags) + ')' if flags else 'no'}; "
          f"threads: {torch.get_num_threads()}; cache budget per thread: {_cache_budget() >> 10} KiB")
    g = torch.Generator().manual_seed(0)
    samples = torch.rand(args.cases, 16, 128, 128, generator=g) > 0.7
    graders = torch.rand(args.cases, 4, 128, 128, generator=g) > 0.7
    samples[:, :3] = False  # some empty masks
    generalized_energy_distance(samples[:8], graders[:8])  # warm-up
    vec = cpu = float("inf")
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        ged = generalized_energy_distance(samples, graders).ged
        vec, cpu = min(vec, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    k = min(args.loop_cases, args.cases)
    t0, c0 = time.perf_counter(), time.process_time()
    ref = ged_loop(samples[:k], graders[:k])
    loop, loop_cpu = ((time.perf_counter() - t0) * args.cases / k, (time.process_time() - c0) * args.cases / k)
    err = (ref - ged[:k].double()).abs().max().item()
    print(f"vectorised: {vec:.3f} s for {args.cases} x 16 x 4 at 128x128 (best of {args.repeats}; target <= 1 s); "
          f"CPU time {cpu:.3f} s over all threads (what a busy machine cannot hide)")
    print(f"per-pair loop: {loop:.1f} s, CPU time {loop_cpu:.1f} s (measured on {k} cases, scaled per case to "
          f"{args.cases}); max |difference| on those cases {err:.1e}")
    print(f"speed-up over the per-pair loop: {loop / vec:.0f}x wall, {loop_cpu / cpu:.0f}x CPU time (target >= 50x)")
    if args.onehot:
        t0 = time.perf_counter()
        oh = ged_onehot(samples, graders)
        t = time.perf_counter() - t0
        print(f"float32 one-hot Gram path on this CPU: {t:.2f} s ({t / vec:.1f}x the vectorised time); "
              f"max |difference| {(oh - ged).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
