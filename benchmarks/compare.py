"""The paper's comparison on built-in data: ProbUNet vs the four baselines and three ablations (issue #4).

Every model is trained by the same bundle command with one shared CPU-sized schedule (its override config from
``bundle/configs/baselines/``), then scored by ``evaluate.yaml`` on the test split at S = 1, 4, 8, 16 together with
the oracle (draws from the true distribution). Writes ``results.md`` (GED at 1/4/8/16 samples, matched IoU at 16,
lesion-presence accuracy, oracle row included) and ``ged_vs_samples.png`` into ``--out``.

    python benchmarks/compare.py                 # the full run (about 90 minutes on 2 CPU cores)
    python benchmarks/compare.py --quick         # minutes: tiny data, 2 epochs, to check the pipeline
    python benchmarks/compare.py --dataset shapes --models probunet unet

The U-Net Ensemble has ``--ensemble-members`` members (trained with different seeds); for S above that number its
members are reused cyclically, so its curve flattens there (the paper trains one ensemble per S).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"

#: model name -> override config (None: the ProbUNet of train.yaml)
MODELS: dict[str, str | None] = {
    "probunet": None,
    "unet": "unet.yaml",
    "dropout_unet": "baselines/dropout_unet.yaml",
    "unet_ensemble": "unet.yaml",
    "mheads": "baselines/mheads.yaml",
    "image2image_vae": "baselines/image2image_vae.yaml",
    "fixed_prior": "baselines/fixed_prior.yaml",
    "fixed_prior_context_free_posterior": "baselines/fixed_prior_context_free_posterior.yaml",
    "input_injection": "baselines/input_injection.yaml",
}


def _configs(name: str, extra: str | None = None) -> str:
    files = [str(CONFIGS / "train.yaml")]
    if MODELS[name] is not None:
        files.append(str(CONFIGS / MODELS[name]))
    if extra is not None:
        files.append(str(CONFIGS / extra))
    return repr(files)


def _bundle(run_id: str, config_files: str, overrides: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_files, *overrides]
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bundle" / "eval" / "compare")
    parser.add_argument("--dataset", default=None, help="built-in dataset name (default: train.yaml's)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--max-epochs", type=int, default=None, help="shared schedule (default: train.yaml's)")
    parser.add_argument("--ensemble-members", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="tiny data and 2 epochs: checks the pipeline in minutes")
    args = parser.parse_args()

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    common: list[str] = ["--dataset_dir", str(out / "data")]
    if args.dataset is not None:
        common += ["--dataset_name", args.dataset]
    if args.quick:
        common += ["--dataset_kwargs#num_patients", "24", "--channels", "[8, 16, 32]", "--val_interval", "1"]
        args.max_epochs = args.max_epochs or 2
        args.ensemble_members = min(args.ensemble_members, 2)
    if args.max_epochs is not None:
        common += ["--max_epochs", str(args.max_epochs)]

    summaries: dict[str, dict] = {}
    timings: dict[str, float] = {}
    for name in args.models:
        t0 = time.perf_counter()
        ckpt = out / "models" / name
        if name == "unet_ensemble":
            members = []
            for seed in range(args.ensemble_members):
                member = ckpt / f"member_{seed}"
                overrides = [*common, "--seed", str(seed), "--ckpt_dir", str(member)]
                _bundle("training", _configs(name), overrides, out / f"train_{name}_{seed}.log")
                members.append(str(member / "model.pt"))
            evaluation = ["--ensemble_ckpts", repr(members), "--model_name", name]
        else:
            _bundle("training", _configs(name), [*common, "--ckpt_dir", str(ckpt)], out / f"train_{name}.log")
            evaluation = ["--model_name", name]
        eval_dir = out / "eval" / name
        overrides = [*common, "--ckpt_dir", str(ckpt), "--output_dir", str(eval_dir), *evaluation]
        _bundle("evaluating", _configs(name, "evaluate.yaml"), overrides, out / f"eval_{name}.log")
        summaries[name] = json.loads((eval_dir / "summary.json").read_text())
        timings[name] = time.perf_counter() - t0
        print(f"{name}: done in {timings[name] / 60:.1f} min", flush=True)

    write_table(summaries, timings, out / "results.md")
    from monai_probunet.visualize import ged_vs_samples

    curves = {name: s["models"][name] for name, s in summaries.items()}
    curves["oracle"] = next(iter(summaries.values()))["models"]["oracle"]
    ged_vs_samples(curves, out / "ged_vs_samples.png")
    print((out / "results.md").read_text())


def _metric(model_summary: dict, metric: str, s: int) -> float | None:
    for row in model_summary["metrics"].get(metric, []):
        if row["S"] == s:
            return row["mean"]
    return None


def write_table(summaries: dict[str, dict], timings: dict[str, float], path: Path) -> None:
    """Markdown table: squared GED at S = 1/4/8/16, matched IoU at 16, presence accuracy, training + eval time."""
    any_summary = next(iter(summaries.values()))
    rows = [(name, s["models"][name], timings.get(name)) for name, s in summaries.items()]
    rows.append(("oracle", any_summary["models"]["oracle"], None))
    lines = [
        f"Test split, {any_summary['num_images']} images; {any_summary['estimator']}; lower GED is better.",
        "",
        "| model | GED² S=1 | S=4 | S=8 | S=16 | matched IoU S=16 | presence accuracy | minutes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, summary, seconds in rows:
        geds = [_metric(summary, "ged", s) for s in (1, 4, 8, 16)]
        iou = _metric(summary, "matched_iou", 16)
        acc = summary.get("presence", {}).get("test_accuracy")
        cells = [f"{v:.3f}" if v is not None else "–" for v in (*geds, iou, acc)]
        minutes = f"{seconds / 60:.1f}" if seconds is not None else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {minutes} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
