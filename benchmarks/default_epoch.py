"""The README's default training by part, on its own data: the pipeline's batches, the training step, validation.

Builds ``train.yaml``'s network, loss, data loaders and validation inferer (the built-in ``lidc_phantom``, generated
on first use) and times, in one process, alternating round by round:

- **the training step** (``ProbUNetTrainer``'s own iteration) on batches as the training pipeline gives them (MONAI
  ``MetaTensor``s, whose plain tensors the trainer hands the network), against the same step with the
  ``MetaTensor``s handed on as they are (every operation then through MONAI's metadata dispatch). Both start each
  round from the same weights and random state and must end at the same weights;
- **the validation pass** (16 hypotheses of each validation image, batches of 32) with f_comb's tiles as they are
  (at least 64 pixels, at most 2^22 elements), against one tile of 256 pixels of all 32 images (67 MB of hidden
  activations in float32), with the minor page faults of each; both must give the same hypotheses;
- **one epoch of the training pipeline** alone (loading, augmentation, batching).

Prints the CPU model, whether it computes bf16 natively and the precision (``precision: auto`` as the bundle resolves
it here, or ``--precision``).

    python benchmarks/default_epoch.py                       # 3 rounds of 8 steps and 4 validation batches
    python benchmarks/default_epoch.py --rounds 5 --precision fp32
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time
from pathlib import Path

import torch
from user_errors import ArgumentParser, positive_int, run_main

REPO = Path(__file__).resolve().parents[1]


def _median_ratio(slow: list[float], fast: list[float]) -> str:
    ratios = [s / f for s, f in zip(slow, fast)]
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=positive_int, default=3, help="alternating rounds")
    parser.add_argument("--steps", type=positive_int, default=8, help="training steps per round and variant")
    parser.add_argument("--val-batches", type=positive_int, default=4, help="validation batches (of 32) per round")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads())
    args = parser.parse_args()

    from monai.bundle import ConfigParser
    from monai.engines import PrepareBatchExtraInput

    from monai_probunet.engines import ProbUNetTrainer, resolve_precision
    from monai_probunet.engines.precision import cpu_model_name, native_bf16_text
    from monai_probunet.networks import fcomb

    torch.set_num_threads(args.threads)
    config = ConfigParser()
    config.read_config(str(REPO / "bundle/configs/train.yaml"))
    config["bundle_root"] = str(REPO / "bundle")
    precision = resolve_precision(args.precision, "cpu")
    print(f"CPU: {cpu_model_name()}; native bf16: {native_bf16_text()}; precision {precision}; "
          f"threads {args.threads}; torch {torch.__version__}")

    torch.manual_seed(0)
    network, loss = config.get_parsed_content("network"), config.get_parsed_content("loss")
    train_loader = config.get_parsed_content("train#dataloader")
    t0 = time.perf_counter()
    batches = [b for b, _ in zip(train_loader, range(args.steps))]
    print(f"training batches: {type(batches[0]['image']).__name__} ({time.perf_counter() - t0:.2f} s for {args.steps})")
    trainers = {}
    for name in ("as the pipeline gives them (MetaTensor)", "plain tensors (the trainer)"):
        trainer = ProbUNetTrainer(
            device=torch.device("cpu"),
            max_epochs=1,
            train_data_loader=batches,
            network=network,
            optimizer=torch.optim.Adam(network.parameters(), lr=config["learning_rate"]),
            loss_function=loss,
            prepare_batch=PrepareBatchExtraInput(extra_keys={"seg": "label"}),
            decollate=False,
            precision=precision,
            channels_last=False,
        )
        if "MetaTensor" in name:
            trainer._plain = lambda batchdata: batchdata  # the batch handed on as the pipeline gives it
        trainers[name] = trainer
    start = copy.deepcopy(network.state_dict())
    step_times: dict[str, list[float]] = {k: [] for k in trainers}
    ends = {}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            network.load_state_dict(start)
            trainer.optimizer = torch.optim.Adam(network.parameters(), lr=config["learning_rate"])
            torch.manual_seed(1)
            t0 = time.perf_counter()
            for batch in batches:
                trainer._iteration(trainer, batch)
            step_times[name].append((time.perf_counter() - t0) / len(batches))
            ends[name] = {k: v.clone() for k, v in network.state_dict().items()}
    same = all(torch.equal(*(ends[n][k] for n in ends)) for k in start)
    meta, plain = step_times
    print(f"\ntraining step ({batches[0]['image'].shape[0]} images of {tuple(batches[0]['image'].shape[2:])}), "
          f"s per step, median of {args.rounds} rounds of {args.steps}:")
    for name, times in step_times.items():
        print(f"  {name}: {statistics.median(times):.3f}")
    print(f"  plain tensors: {_median_ratio(step_times[meta], step_times[plain])} faster; the same weights: {same}")

    network.eval()
    inferer = config.get_parsed_content("validate#inferer")
    val_loader = config.get_parsed_content("validate#dataloader")
    val_batches = [b["image"] for b, _ in zip(val_loader, range(args.val_batches))]
    variants = {"one tile of 256 pixels per batch": (256, 1 << 62), "the tiles as they are": (None, None)}
    defaults = (fcomb._MIN_TILE, fcomb._MAX_TILE_ELEMENTS)
    val_times: dict[str, list[float]] = {k: [] for k in variants}
    faults: dict[str, list[int]] = {k: [] for k in variants}
    outputs = {}
    for _ in range(args.rounds):
        for name, (min_tile, max_elements) in variants.items():
            fcomb._MIN_TILE, fcomb._MAX_TILE_ELEMENTS = (min_tile or defaults[0], max_elements or defaults[1])
            inferer.reset()
            f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
            with torch.no_grad():
                outputs[name] = torch.cat([inferer(images, network) for images in val_batches])
            val_times[name].append(time.perf_counter() - t0)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    fcomb._MIN_TILE, fcomb._MAX_TILE_ELEMENTS = defaults
    big, now = variants
    images = sum(len(b) for b in val_batches)
    print(f"\nvalidation sampling ({images} images x {inferer.num_samples} hypotheses), s, median of {args.rounds}:")
    for name in variants:
        print(f"  {name}: {statistics.median(val_times[name]):.2f} ({statistics.median(faults[name]):,.0f} minor "
              "page faults)")
    print(f"  the tiles as they are: {_median_ratio(val_times[big], val_times[now])} faster; the same hypotheses: "
          f"{torch.equal(outputs[big], outputs[now])}")

    t0 = time.perf_counter()
    count = sum(1 for _ in train_loader)
    print(f"\none epoch of the training pipeline alone ({count} batches): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    run_main(main)
