"""Latency of 16 hypotheses vs 1 for one 128x128 image, ours and the plain reference port side by side.

Ours runs the U-Net and the prior once and evaluates f_comb's first 1x1 convolution as a per-image feature part plus
a per-sample latent offset, batched over all samples; the reference (``benchmarks/train_speed.py``'s
``RefProbUNet``, a straightforward port) loops over the samples in Python and reruns f_comb on the concatenated
features and tiled latent each time. Both are timed in this run, interleaved.

    python benchmarks/sample_latency.py [--rounds 5] [--fcomb-channels 128]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from train_speed import FILTERS, LATENT, RefProbUNet, interleaved, sampler
from user_errors import ArgumentParser, positive_int, run_main

from monai_probunet.engines.precision import cpu_bf16_flags, cpu_model_name
from monai_probunet.networks import ProbUNet


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--repeats", type=positive_int, default=5, help="calls per round and variant")
    parser.add_argument("--fcomb-channels", type=positive_int, default=None,
                        help="ours' f_comb width (default 32, the paper's)")  # fmt: skip
    args = parser.parse_args(argv)
    flags = cpu_bf16_flags()
    print(f"CPU: {cpu_model_name()}; native bf16: {'yes' if flags else 'no'}; threads {torch.get_num_threads()}")
    torch.manual_seed(0)
    ref = RefProbUNet().eval()
    ours = ProbUNet(2, 1, 2, channels=FILTERS, latent_dim=LATENT, fcomb_channels=args.fcomb_channels).eval()
    for precision in ["fp32"] + (["bf16"] if flags else []):
        fns = {
            (name, s): sampler(net, s, precision, name == "ours")
            for s in (1, 16)
            for name, net in (("reference", ref), ("ours", ours))
        }
        t = interleaved(fns, args.rounds, args.repeats)
        ms = {k: 1000 * statistics.median(v) for k, v in t.items()}
        for name in ("reference", "ours"):
            print(f"{precision} {name:9s}: 1 hypothesis {ms[name, 1]:7.1f} ms, 16 hypotheses {ms[name, 16]:7.1f} ms, "
                  f"16 vs 1 {ms[name, 16] / ms[name, 1]:.2f}x")  # fmt: skip
        print(f"{precision} ours/reference speed: {ms['reference', 1] / ms['ours', 1]:.2f}x at 1, "
              f"{ms['reference', 16] / ms['ours', 16]:.2f}x at 16 hypotheses")  # fmt: skip
    return 0


if __name__ == "__main__":
    run_main(main)
