"""The CPU default's instance norm + ReLU by memory format and kernel, side by side in one process.

Forward and backward of the parameter-free instance norm followed by the in-place ReLU (what every 3x3 convolution of
``train.yaml``'s network is followed by) on the four activations of ``train_speed.py``'s port-size network (batch 8,
32 x 128² to 192 x 16²), in fp32 and, where the CPU computes bf16 natively, in bf16: channels-first through
``PlainInstanceNorm`` (``group_norm``: the default path), channels-last through ``PlainInstanceNorm`` (batch-norm
kernels per sample) and channels-last through ``F.instance_norm`` (the path before). The three alternate within each
round; the fastest round of each is printed (ms for all four activations).

    python benchmarks/norm_kernels.py [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from user_errors import ArgumentParser, positive_int, run_main

from monai_probunet.engines.precision import cpu_bf16_flags, cpu_model_name, native_bf16_text
from monai_probunet.networks.instance_norm import PlainInstanceNorm

SHAPES = ((8, 32, 128, 128), (8, 64, 64, 64), (8, 128, 32, 32), (8, 192, 16, 16))


def _pass(norm, inputs: list[torch.Tensor], grads: list[torch.Tensor]) -> float:
    """Seconds for the forward and backward of ``norm`` + in-place ReLU over every activation."""
    fresh = [x.detach().clone().requires_grad_() for x in inputs]
    t0 = time.perf_counter()
    for x, g in zip(fresh, grads):
        norm(x * 1.0).relu_().backward(g)  # `* 1.0`: the norm's input is a non-leaf, as a convolution's output is
    return time.perf_counter() - t0


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive_int, default=7, help="alternating rounds; the fastest is printed")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model_name()}; native bf16: {native_bf16_text()}; threads {args.threads}; torch {torch.__version__}")
    torch.manual_seed(0)

    def plain(x: torch.Tensor) -> torch.Tensor:  # no parameters: a module per call costs microseconds
        return PlainInstanceNorm(x.shape[1])(x)

    paths = {
        "channels-first, group_norm (the default)": (torch.contiguous_format, plain),
        "channels-last, per-sample batch norm": (torch.channels_last, plain),
        "channels-last, instance_norm (before)": (torch.channels_last, lambda x: F.instance_norm(x, eps=1e-5)),
    }
    for dtype in [torch.float32] + ([torch.bfloat16] if cpu_bf16_flags() else []):
        data = {}
        for name, (fmt, _) in paths.items():
            inputs = [(torch.randn(s) * 3 + 1).to(dtype).contiguous(memory_format=fmt) for s in SHAPES]
            grads = [torch.randn(s).to(dtype).contiguous(memory_format=fmt) for s in SHAPES]
            data[name] = (inputs, grads)
        best = dict.fromkeys(paths, float("inf"))
        for _ in range(args.rounds):
            for name, (_, norm) in paths.items():
                best[name] = min(best[name], _pass(norm, *data[name]))
        print(f"\n{str(dtype).removeprefix('torch.')}: norm + ReLU, forward and backward, the four activations (ms)")
        for name, seconds in best.items():
            print(f"  {name:42s} {seconds * 1e3:7.1f}")


if __name__ == "__main__":
    run_main(main)
