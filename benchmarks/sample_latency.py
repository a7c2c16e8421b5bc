"""Latency of 16 hypotheses vs 1 hypothesis for one 128x128 image (issue #2 benchmark).

The U-Net and the prior run once; f_comb's first 1x1 convolution is split into a per-image feature part and a
per-sample latent offset, so extra samples only cost two small 1x1 convolutions each. The popular PyTorch port
takes 1.67x (103 ms vs 62 ms on this CPU) because it reruns f_comb on concatenated inputs per sample.

    python benchmarks/sample_latency.py [--repeats 30]
    python benchmarks/sample_latency.py --fcomb-channels 128   # f_comb as wide as the bundle default's
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from monai_probunet.engines import autocast_context, resolve_precision
from monai_probunet.networks import ProbUNet

PORT_RATIO = 1.67


def latency_ms(net: ProbUNet, image: torch.Tensor, num_samples: int, precision: str, repeats: int) -> float:
    times = []
    with torch.inference_mode(), autocast_context(precision, "cpu"):
        for i in range(repeats + 3):
            t0 = time.perf_counter()
            net.sample(image, num_samples)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--fcomb-channels", type=int, default=None, help="f_comb width (default: 32, the paper's)")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = ProbUNet(2, 1, 2, channels=(32, 64, 128, 192), latent_dim=6, fcomb_channels=args.fcomb_channels).eval()
    image = torch.rand(1, 1, 128, 128)
    precisions = ["fp32"] + (["bf16"] if resolve_precision("auto", "cpu") == "bf16" else [])
    for precision in precisions:
        # interleave 1 and 16 so drift in machine load hits both alike
        one, sixteen = [], []
        for _ in range(3):
            one.append(latency_ms(net, image, 1, precision, args.repeats // 3))
            sixteen.append(latency_ms(net, image, 16, precision, args.repeats // 3))
        t1, t16 = statistics.median(one), statistics.median(sixteen)
        print(f"{precision}: 1 hypothesis {t1:6.1f} ms, 16 hypotheses {t16:6.1f} ms, ratio {t16 / t1:.2f}x "
              f"(port {PORT_RATIO}x, target <= 1.15x)")


if __name__ == "__main__":
    main()
