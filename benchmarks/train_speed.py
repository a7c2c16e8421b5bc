"""Training throughput (images/s) at 128x128, batch 8, channels 32-64-128-192, latent 6 (issue #2 benchmark).

Side by side in one run: the same ProbUNet training step in plain fp32 / channels-first (what a straightforward
PyTorch port does), and with bf16 autocast (fp32 master weights) and/or the channels_last memory format.
The reference port itself cannot be run here (no downloads); its published figure on this CPU is quoted.

    python benchmarks/train_speed.py [--iterations 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
from monai.engines import PrepareBatchExtraInput

from monai_probunet.engines import ProbUNetTrainer
from monai_probunet.engines.precision import resolve_precision
from monai_probunet.losses import ELBOLoss
from monai_probunet.networks import ProbUNet

PORT_IMAGES_PER_S = 3.7  # the popular PyTorch port on this 2-core CPU, fp32 (figure quoted in issue #2)


def measure(precision: str, channels_last: bool, iterations: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    net = ProbUNet(2, 1, 2, channels=(32, 64, 128, 192), latent_dim=6)
    batch = [
        {"image": torch.rand(8, 1, 128, 128), "label": (torch.rand(8, 1, 128, 128) > 0.7).float()}
    ] * (warmup + iterations)
    times: list[float] = []
    trainer = ProbUNetTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=batch,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=1e-4),
        loss_function=ELBOLoss(),
        prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
        decollate=False,
        precision=precision,
        channels_last=channels_last,
    )
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: times.append(time.perf_counter()))
    trainer.add_event_handler(Events.COMPLETED, lambda e: times.append(time.perf_counter()))
    trainer.run()
    elapsed = times[-1] - times[warmup]
    return 8 * iterations / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}  precision='auto' resolves to {resolve_precision('auto', 'cpu')} on this CPU")
    results = {}
    for precision, channels_last in (("fp32", False), ("bf16", False), ("fp32", True), ("bf16", True)):
        if precision == "bf16" and resolve_precision("auto", "cpu") != "bf16":
            continue  # emulated bf16 is slow and not what the trainer would pick
        results[(precision, channels_last)] = speed = measure(precision, channels_last, args.iterations)
        layout = "channels_last" if channels_last else "channels-first"
        print(f"{precision:5s} {layout:15s} {speed:6.2f} images/s   {speed / PORT_IMAGES_PER_S:5.2f}x the port's "
              f"{PORT_IMAGES_PER_S} images/s")
    base = results[("fp32", False)]
    best = max(results, key=results.get)
    print(f"fastest: {best[0]} {'channels_last' if best[1] else 'channels-first'}: {results[best] / base:.2f}x fp32 "
          f"channels-first in this run; {results[best] / PORT_IMAGES_PER_S:.2f}x the port (target >= 2x)")


if __name__ == "__main__":
    main()
