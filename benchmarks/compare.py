"""The paper's comparison on built-in data: ProbUNet vs the four baselines, three ablations and the paper's ProbUNet.

Every model is trained by the same bundle command with one shared CPU-sized schedule (its override config from
``bundle/configs/baselines/``; ``paper_model``: ``paper_model.yaml``, the paper's own ProbUNet settings), then
scored by ``evaluate.yaml`` on the test split at S = 1, 4, 8, 16 together with the oracle (draws from the true
distribution). Writes ``results.md`` (GED at 1/4/8/16 samples, matched IoU at 16, lesion-presence accuracy, oracle
row included) and ``ged_vs_samples.png`` into ``--out``. The table also holds the reference rows every sampling
model must beat (``reference_rows.py``): the readers' majority vote repeated S times (the best single answer) and
predicting nothing; on the 32-mode task the graders' pixel-wise vote and the most probable mode, with their Eq. 7
GED.

    python benchmarks/compare.py --jobs 2        # the full run: two 1-thread trainings at a time on 2 CPU cores
    python benchmarks/compare.py --quick         # minutes: tiny data, 2 epochs, to check the pipeline
    python benchmarks/compare.py --jobs 2 --resume   # after an interruption: each training continues where it stopped
    python benchmarks/compare.py --dataset shapes --dataset-kwargs "{'num_patients': 300}" --models probunet unet
    python benchmarks/compare.py --dataset-dir DIR --out OUT  # your own data (the project's on-disk format)
    python benchmarks/compare.py --dataset-dir DIR --out OUT --tracking   # and every run in MLflow
    python benchmarks/compare.py --task scenes32  # the 32-mode street scenes (scenes32.yaml, scenes32_evaluate.yaml)
    python benchmarks/compare.py --report --heldout DIR  # also score the trained models on DIR's test split
    python benchmarks/compare.py --report --validation   # and on the validation split of the data they trained on

``--out`` is a new or empty folder, or an earlier comparison's (it holds ``comparison.json``): a folder holding
files of someone else is refused, and nothing in it is replaced. ``--report`` and ``--resume`` take the task and the
models that comparison ran unless ``--task`` / ``--models`` are given.

``--heldout DIR`` scores the checkpoints of the table (those its evaluations scored) on a second dataset's test split
as well, e.g. the patients that ``benchmarks/heldout_patients.py --out DIR`` writes, and adds a table of it to
``results.md``; with ``--report`` it scores only the models not yet scored there. ``--validation`` does the same on
the validation split of the task's own data (no presence rule there: it is fitted on that split).

With ``--task scenes32`` the table adds Eq. 7 GED against the 32 known modes, the Pearson r of mode frequencies
against mode probabilities and the modes hit (from each model's ``calibration.json``), and ``mode_calibration.png``
overlays every model's Fig. 5 scatter.

With ``--tracking`` every training and evaluation logs into MLflow (``docs/training.md``), in one experiment
(``--experiment-name``, default the ``--out`` folder's name; the store ``--tracking-uri``, default the bundle's
``bundle/eval/mlruns.db``): a training run per model named after it (``unet_ensemble_member_N`` per member) with its
evaluation as a child run (``eval_<model>``; ``eval_validation_<model>``, ``eval_heldout_<model>``), and a run
``comparison`` holding ``results.md``, the figures and every model's GED by S.

The U-Net Ensemble has ``--ensemble-members`` members (trained with different seeds); for S above that number its
members are reused cyclically, so its curve flattens there (the paper trains one ensemble per S).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from monai_probunet.bundle_utils import EXIT_INTERRUPTED, ConfigValueError, folder_write_problem, positive_int
from monai_probunet.io_utils import OutputFolderError, atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundle" / "configs"

#: model name -> override config (None: the ProbUNet of train.yaml)
MODELS: dict[str, str | None] = {
    "probunet": None,
    "paper_model": "paper_model.yaml",
    "unet": "unet.yaml",
    "dropout_unet": "baselines/dropout_unet.yaml",
    "unet_ensemble": "unet.yaml",
    "mheads": "baselines/mheads.yaml",
    "image2image_vae": "baselines/image2image_vae.yaml",
    "fixed_prior": "baselines/fixed_prior.yaml",
    "fixed_prior_context_free_posterior": "baselines/fixed_prior_context_free_posterior.yaml",
    "input_injection": "baselines/input_injection.yaml",
}


#: relative training cost (1-thread minutes at the default schedule, measured): the longest start first with --jobs
COST: dict[str, float] = {"input_injection": 12, "probunet": 10, "paper_model": 10, "dropout_unet": 10,
                          "image2image_vae": 9, "fixed_prior": 9, "fixed_prior_context_free_posterior": 9, "mheads": 6,
                          "unet": 6, "unet_ensemble": 6}  # fmt: skip

#: task name -> (its override of train.yaml, its extension of evaluate.yaml), None where the task has none
TASKS: dict[str, tuple[str | None, str | None]] = {
    "lidc": (None, None),
    "scenes32": ("scenes32.yaml", "scenes32_evaluate.yaml"),
}


def _config_files(name: str, task: str, evaluate: bool = False) -> list[str]:
    task_train, task_evaluate = TASKS[task]
    overrides = [task_train, MODELS[name]] + (["evaluate.yaml", task_evaluate] if evaluate else [])
    return [str(CONFIGS / "train.yaml")] + [str(CONFIGS / f) for f in overrides if f is not None]


def _configs(name: str, task: str, evaluate: bool = False) -> str:
    """The bundle's ``--config_file`` argument for ``name`` on ``task``."""
    return repr(_config_files(name, task, evaluate))


def scored_checkpoint(name: str, task: str, ckpt_dir: Path) -> str:
    """The checkpoint in ``ckpt_dir`` that the evaluation of ``name`` on ``task`` scores (its ``ckpt_path``):
    ``model.pt`` (the weights training ends with), or ``checkpoint_final.pt`` where the task's override says so
    (scenes32: the same weights)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_config_files(name, task, evaluate=True))
    parser["ckpt_dir"] = str(ckpt_dir)
    return str(parser.get_parsed_content("ckpt_path"))


def _bundle(run_id: str, config_files: str, overrides: list[str], log: Path, threads: int | None = None) -> float:
    """Run a bundle workflow in a subprocess (stdout + stderr into ``log``); returns its wall seconds."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", config_files,
           "--bundle_root", str(REPO / "bundle"), *overrides]  # from any working directory
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False, env=env)
    if proc.returncode == EXIT_INTERRUPTED:  # Ctrl-C reached the bundle run too: it saved what it can resume
        raise KeyboardInterrupt
    if proc.returncode != 0:
        errors = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")]
        if errors:  # the bundle command's one line for bad input (exit status 2)
            line = errors[-1][len("error: "):]
            hint = " (here: rerun with --resume)" if "holds an unfinished run" in line else ""
            raise BundleInputError(f"`run {run_id}` refused its input: {line}{hint} (log: {log})")
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return time.perf_counter() - t0


#: written into --out when a comparison starts there: a folder with it (or an earlier comparison's
#: ``prepare_data.log``) is a comparison's, which a new run, --resume and --report write into
MARKER = "comparison.json"


def _is_comparison(out: Path) -> bool:
    """Whether the folder ``out`` may be written into: empty, or a comparison's (``MARKER``)."""
    return not any(out.iterdir()) or (out / MARKER).is_file() or (out / "prepare_data.log").is_file()


def _literal(text: str) -> object:
    """``text`` as the bundle command reads an option's value: a Python literal, else ``None``."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _recorded(out: Path) -> dict:
    """What the comparison in ``out`` recorded when it started (``MARKER``: its task and models), ``{}`` where it
    recorded nothing readable; models or a task this program does not know are left out."""
    try:
        recorded = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    models = recorded.get("models")
    valid = isinstance(models, list) and models and all(m in MODELS for m in models)
    task = recorded.get("task")
    return {"task": task if task in TASKS else None, "models": models if valid else None}


def tracking_options(tracking: dict[str, str] | None, run_name: str) -> list[str]:
    """The bundle options that log a run named ``run_name`` into the comparison's MLflow experiment (``tracking``:
    ``compare_tracking.open_experiment``'s; none without it)."""
    if tracking is None:
        return []
    return ["--tracking", "mlflow", "--tracking_uri", tracking["uri"], "--experiment_name", tracking["experiment"],
            "--run_name", run_name]  # fmt: skip


class BundleInputError(ValueError):
    """A bundle run of the comparison refused its input (a dataset name, a value): printed as one line, exit 2."""


#: quick mode: a few images and a narrow network per task
QUICK_DATA: dict[str, list[str]] = {
    "lidc": ["--dataset_kwargs#num_patients", "24"],
    "scenes32": [
        "--dataset_kwargs", "{'num_cities': 8, 'images_per_city': 2, 'image_size': [32, 64], 'num_graders': 3}",
    ],  # fmt: skip
}


def main() -> None:
    from user_errors import ArgumentParser  # by name from this folder, as the script's other siblings

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bundle" / "eval" / "compare")
    parser.add_argument("--task", default=None, choices=list(TASKS),
                        help="lidc (default): train.yaml's data; scenes32. With --report/--resume: the comparison's")
    parser.add_argument("--dataset", default=None, help="built-in dataset name (default: the task's)")
    parser.add_argument("--dataset-dir", type=Path, default=None,
                        help="your own multi-grader data in the project's on-disk format (README: 'Your own "
                        "multi-grader data'), read, never written; default: the task's built-in data in OUT/data")
    parser.add_argument("--dataset-kwargs", default=None,
                        help="generation parameters, a dict literal (default with --dataset: that dataset's defaults)")
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                        help="default: every model; with --report/--resume, those the comparison in --out ran")
    parser.add_argument("--max-epochs", type=int, default=None, help="shared schedule (default: the task's)")
    parser.add_argument("--ensemble-members", type=positive_int, default=4)
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once, each with cores // jobs threads")
    parser.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                        help="every training's precision (default: train.yaml's auto, timed anew by each run)")
    parser.add_argument("--quick", action="store_true", help="tiny data and 2 epochs: checks the pipeline in minutes")
    parser.add_argument("--report", action="store_true", help="only rebuild results.md and the figures from --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted comparison in --out: every training resumes its "
                        "checkpoint_last.pt (a completed one trains no further; the table's minutes then count this "
                        "run's part)")
    parser.add_argument("--heldout", type=Path, default=None,
                        help="a second dataset (the project's on-disk format) whose test split scores every model too")
    parser.add_argument("--validation", action="store_true",
                        help="also score every model on the validation split of the data it trained on")
    parser.add_argument("--tracking", nargs="?", const="mlflow", default=None, choices=["mlflow"],
                        help="log every training and evaluation, and the table, into MLflow (one experiment); "
                        "`--tracking mlflow` as the bundle command spells it is the same")
    parser.add_argument("--tracking-uri", default=None,
                        help="the MLflow store: a database (sqlite:///PATH.db) or a server (http://HOST:PORT); "
                        "default: the bundle's bundle/eval/mlruns.db (MLFLOW_TRACKING_URI overrides it)")
    parser.add_argument("--experiment-name", default=None, help="the MLflow experiment (default: --out's folder name)")
    args = parser.parse_args()
    if (args.tracking_uri or args.experiment_name) and not args.tracking:
        parser.error("--tracking-uri/--experiment-name: only with --tracking")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.dataset_dir is not None and (args.dataset is not None or args.dataset_kwargs is not None):
        parser.error("--dataset-dir is your own data: --dataset and --dataset-kwargs name built-in data to generate")
    if args.dataset_kwargs is not None and not isinstance(_literal(args.dataset_kwargs), dict):
        example = "\"{'num_patients': 12}\""
        parser.error(f"--dataset-kwargs: expected a dict such as {example}, got {args.dataset_kwargs!r}")
    if args.dataset_dir is not None and not (args.dataset_dir / "datalist.json").is_file():
        parser.error(f"--dataset-dir {args.dataset_dir}: no datalist.json there (README: 'Your own multi-grader data')")
    if args.heldout is not None and not (args.heldout / "datalist.json").is_file():
        parser.error(f"--heldout {args.heldout}: no datalist.json there (benchmarks/heldout_patients.py --out DIR)")

    out = args.out.resolve()
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"--out {out} is a file, not a folder; give a folder path.")
    problem = folder_write_problem(out)
    if problem is not None:
        raise OutputFolderError(f"--out {out} {problem}.")
    if out.exists() and not _is_comparison(out):
        raise OutputFolderError(f"--out {out} is a folder holding files this program did not write; it is left "
                                "untouched: give an empty or new folder, or an earlier comparison's.")  # fmt: skip
    if args.report and not out.is_dir():
        parser.error(f"--report: {out} holds no comparison (run without --report first)")
    recorded = _recorded(out)
    args.task = args.task or recorded.get("task") or "lidc"
    args.models = args.models or (recorded.get("models") if args.report or args.resume else None) or list(MODELS)
    if args.max_epochs is not None and args.max_epochs < 1:
        parser.error(f"--max-epochs must be >= 1, got {args.max_epochs}")
    args.mlflow = None
    if args.tracking:
        from compare_tracking import open_experiment

        args.mlflow = open_experiment(args.tracking_uri, args.experiment_name or out.name, REPO)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).is_file():
        atomic_write_json(out / MARKER, {"task": args.task, "dataset_dir": str(args.dataset_dir or ""),
                                         "dataset": args.dataset, "models": args.models})  # fmt: skip
    data_dir = args.dataset_dir.resolve() if args.dataset_dir is not None else out / "data"
    common: list[str] = ["--dataset_dir", str(data_dir)]
    if args.dataset_dir is not None:
        common += ["--dataset_name", "folder"]
    if args.dataset is not None:
        common += ["--dataset_name", args.dataset]
    if args.dataset is not None or args.dataset_kwargs is not None:  # train.yaml's kwargs are lidc_phantom's
        common += ["--dataset_kwargs", args.dataset_kwargs or "{}"]
    if args.quick:
        data = QUICK_DATA[args.task] if args.dataset_dir is None else []  # your own data as it is
        common += [*data, "--channels", "[8, 16, 32]", "--val_interval", "1"]
        args.max_epochs = args.max_epochs or 2
        args.ensemble_members = min(args.ensemble_members, 2)
    if args.max_epochs is not None:
        common += ["--max_epochs", str(args.max_epochs)]
    if args.precision is not None:
        common += ["--precision", args.precision]
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None

    if args.report:
        path = out / "timings.json"
        timings = json.loads(path.read_text()) if path.is_file() else {}
    else:
        timings = _train_and_evaluate(args, out, common, threads)
        atomic_write_json(out / "timings.json", timings)
    summaries: dict[str, dict] = {}
    calibrations: dict[str, dict] = {}
    for name in args.models:
        eval_dir = out / "eval" / name
        if not (eval_dir / "summary.json").is_file():
            raise FileNotFoundError(f"{eval_dir / 'summary.json'} does not exist: run without --report first.")
        summaries[name] = json.loads((eval_dir / "summary.json").read_text())
        if (eval_dir / "calibration.json").is_file():
            calibrations[name] = json.loads((eval_dir / "calibration.json").read_text())

    scoring = _task_scoring(args.task)
    references = _references(next(iter(summaries.values())), data_dir / "datalist.json", *scoring)
    tables = [table(summaries, timings, calibrations, _wilcoxon_vs(out / "eval", args.models, "probunet"), references)]
    elsewhere = []  # (results folder, datalist, title, overrides that choose the data and the split)
    if args.validation:
        split = [*common, "--eval_split", "validation", "--threshold_split", "null"]
        elsewhere.append((out / "eval_validation", data_dir / "datalist.json", "Validation split", split))
    if args.heldout is not None:
        pairs = zip(common[::2], common[1::2])  # `--key value` pairs: all but those that choose the data
        shared = [a for key, value in pairs if not key.startswith("--dataset") for a in (key, value)]
        data = ["--dataset_name", "folder", "--dataset_dir", str(args.heldout.resolve())]
        elsewhere.append((out / "eval_heldout", args.heldout / "datalist.json", f"{args.heldout}: test split",
                          [*shared, *data]))  # fmt: skip
    for evals, datalist, title, overrides in elsewhere:
        scored = _score_elsewhere(args, out, evals, overrides, threads)
        refs = _references(next(iter(scored.values())), datalist, *scoring)
        tables.append(table(scored, {}, None, _wilcoxon_vs(evals, args.models, "probunet"), refs, title))
    atomic_write_text(out / "results.md", "\n".join(tables))
    from monai_probunet.visualize import ged_vs_samples

    curves = {name: s["models"][name] for name, s in summaries.items()}
    curves["oracle"] = next(iter(summaries.values()))["models"]["oracle"]
    from monai_probunet.metrics.references import best_single_answer

    bars = {}
    if references:
        best = references[best_single_answer({k: r["ged"] for k, r in references.items()})]
        bars = {best["label"].removeprefix("reference: ").removesuffix(" repeated"): best["ged"]}
    ged_vs_samples(curves, out / "ged_vs_samples.png", references=bars)
    if calibrations:
        from monai_probunet.metrics.calibration import ModeCalibration
        from monai_probunet.visualize import mode_calibration_plot

        names = [*calibrations, "oracle"]
        any_cal = next(iter(calibrations.values()))
        sources = {n: any_cal if n == "oracle" else calibrations[n] for n in names}
        cals = {n: ModeCalibration.from_dict(c["models"][n]["mode_calibration"]) for n, c in sources.items()}
        mode_calibration_plot(cals, out / "mode_calibration.png")
    print((out / "results.md").read_text())
    if args.mlflow is not None:
        settings = {"task": args.task, "models": " ".join(args.models), "dataset_dir": str(args.dataset_dir or ""),
                    "dataset": args.dataset or "", "max_epochs": args.max_epochs or "",
                    "precision": args.precision or "", "ensemble_members": args.ensemble_members, "out": str(out)}
        from compare_tracking import log_comparison

        log_comparison(args.mlflow, out, summaries, timings, settings)


def _train_and_evaluate(
    args: argparse.Namespace, out: Path, common: list[str], threads: int | None
) -> dict[str, float]:
    """Generate the data once, train every model (``--jobs`` at a time), evaluate each; returns wall seconds per
    model (training + evaluation)."""
    _bundle("datalist", _configs(args.models[0], args.task), common, out / "prepare_data.log")
    # one training per model (per member for the ensemble), the most expensive first
    units: list[tuple[str, int | None]] = []
    for name in args.models:
        units += [(name, s) for s in range(args.ensemble_members)] if name == "unet_ensemble" else [(name, None)]
    units.sort(key=lambda u: COST.get(u[0], 1.0), reverse=True)
    ckpts = {name: out / "models" / name for name in args.models}

    def train(unit: tuple[str, int | None]) -> float:
        name, seed = unit
        if seed is None:
            ckpt, log = ckpts[name], out / f"train_{name}.log"
            overrides = [*common, "--ckpt_dir", str(ckpt)]
        else:
            ckpt, log = ckpts[name] / f"member_{seed}", out / f"train_{name}_{seed}.log"
            overrides = [*common, "--seed", str(seed), "--ckpt_dir", str(ckpt)]
        if args.resume:
            overrides += ["--resume", "true"]
        if args.mlflow is not None:  # the executed config MONAI writes at start, named by the second: one folder each
            run_name = name if seed is None else f"{name}_member_{seed}"
            overrides += ["--output_dir", str(ckpt), *tracking_options(args.mlflow, run_name)]
        seconds = _bundle("training", _configs(name, args.task), overrides, log, threads)
        print(f"trained {name}{'' if seed is None else f' member {seed}'} in {seconds / 60:.1f} min", flush=True)
        return seconds

    def evaluate(name: str) -> float:
        if name == "unet_ensemble":
            # each member's checkpoint as the task scores a single model (model.pt, or checkpoint_final.pt)
            members = [scored_checkpoint(name, args.task, ckpts[name] / f"member_{s}")
                       for s in range(args.ensemble_members)]  # fmt: skip
            evaluation = ["--ensemble_ckpts", repr(members), "--model_name", name]
        else:
            evaluation = ["--model_name", name]
        overrides = [*common, "--ckpt_dir", str(ckpts[name]), "--output_dir", str(out / "eval" / name), *evaluation,
                     *tracking_options(args.mlflow, f"eval_{name}")]  # fmt: skip
        return _bundle("evaluating", _configs(name, args.task, evaluate=True), overrides, out / f"eval_{name}.log",
                       threads)  # fmt: skip

    timings = dict.fromkeys(args.models, 0.0)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for unit, seconds in zip(units, pool.map(train, units)):
            timings[unit[0]] += seconds
        for name, seconds in zip(args.models, pool.map(evaluate, args.models)):
            timings[name] += seconds
    return timings


def _per_image_ged(evals: Path, name: str, s: int) -> np.ndarray:
    """Per-image squared GED at S = ``s`` of model ``name`` from ``evals/name/per_image.csv``, datalist order."""
    with open(evals / name / "per_image.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == name and int(r["S"]) == s]
    return np.array([float(r["ged"]) for r in sorted(rows, key=lambda r: int(r["index"]))])


def _wilcoxon_vs(evals: Path, models: list[str], reference: str, s: int = 16) -> dict[str, float]:
    """Two-sided Wilcoxon signed-rank p-value of each model's per-image GED at S = ``s`` against ``reference``'s
    (their evaluations in ``evals/<model>``)."""
    from monai_probunet.metrics import wilcoxon_signed_rank

    if reference not in models:
        return {}
    ref = _per_image_ged(evals, reference, s)
    return {
        n: float(wilcoxon_signed_rank(_per_image_ged(evals, n, s), ref)["p_value"]) for n in models if n != reference
    }


def _task_scoring(task: str) -> tuple[list[int], int | None]:
    """The classes the task's GED scores (``ged_classes``, default ``[1]``) and its ``ignore_index``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_config_files("probunet", task, evaluate=True))
    return [int(c) for c in parser.get("ged_classes", [1])], parser.get("ignore_index")


def _references(summary: dict, datalist: Path, classes: list[int], ignore_index: int | None) -> dict[str, dict]:
    """``{key: {"label": row label, "ged": GED, "eq7": Eq. 7 GED or None}}`` of the single answers a model must beat
    on the test split (:mod:`monai_probunet.metrics.references`; repeated S times they score the same at every S):
    the evaluation's own ``references`` in ``summary``, or for an evaluation written before it held them, computed
    from ``datalist`` (``reference_rows.py``; empty where it does not exist)."""
    from monai_probunet.data import load_datalist
    from monai_probunet.metrics.references import reference_label

    rows = summary.get("references")
    if rows is None:
        if not datalist.is_file():
            return {}
        from reference_rows import reference_rows

        flat = reference_rows(datalist, "test", classes=classes, ignore_index=ignore_index)
        graders = len(load_datalist(datalist, "test")[0]["label"])
        rows = {}
        for name, ged in flat.items():
            key, sep, rest = name.partition(" (x16)")
            if sep and not rest:
                rows[key] = {"label": reference_label(key, graders), "ged": ged, "ged_eq7": flat.get(f"{name} [Eq. 7]")}
    out = {}
    for key, row in rows.items():
        label = "reference: predicting nothing" if key == "empty" else f"reference: {row['label']} repeated"
        out[key] = {"label": label, "ged": row["ged"], "eq7": row.get("ged_eq7")}
    return out


def _score_elsewhere(
    args: argparse.Namespace, out: Path, evals: Path, overrides: list[str], threads: int | None
) -> dict[str, dict]:
    """Score the checkpoints that ``out/eval/<model>`` scored with the evaluation ``overrides`` (the data and split)
    into ``evals/<model>`` (with ``--report`` only those not scored there yet); returns the summaries."""

    def score(name: str) -> None:
        if args.report and (evals / name / "summary.json").is_file():
            return
        checkpoint = json.loads((out / "eval" / name / "summary.json").read_text())["checkpoint"]
        ensemble = isinstance(checkpoint, list)
        weights = ["--ensemble_ckpts", repr(checkpoint)] if ensemble else ["--ckpt_path", checkpoint]
        run = [*overrides, *weights, "--model_name", name, "--output_dir", str(evals / name),
               *tracking_options(args.mlflow, f"{evals.name}_{name}")]  # fmt: skip
        seconds = _bundle("evaluating", _configs(name, args.task, evaluate=True), run,
                          out / f"{evals.name}_{name}.log", threads)  # fmt: skip
        print(f"scored {name} into {evals} in {seconds / 60:.1f} min", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(score, args.models))
    return {name: json.loads((evals / name / "summary.json").read_text()) for name in args.models}


def _metric(model_summary: dict, metric: str, s: int) -> float | None:
    for row in model_summary["metrics"].get(metric, []):
        if row["S"] == s:
            return row["mean"]
    return None


def table(
    summaries: dict[str, dict], timings: dict[str, float], calibrations: dict[str, dict] | None = None,
    p_values: dict[str, float] | None = None, references: dict[str, dict[str, float]] | None = None,
    title: str = "Test split",
) -> str:
    """Markdown table: squared GED at S = 1/4/8/16, matched IoU at 16, presence accuracy (binary tasks) or Eq. 7 GED,
    Pearson r and modes hit (``calibrations``: the 32-mode task), the Wilcoxon p-value of per-image GED at S = 16
    against ProbUNet (``p_values``), training + evaluation minutes; the ``references`` rows (``{key: {"label", "ged":
    GED, "eq7": Eq. 7 GED}}``, the same at every S) before the oracle's."""
    calibrations = calibrations or {}
    p_values = p_values or {}
    any_summary = next(iter(summaries.values()))
    any_cal = next(iter(calibrations.values()), None)
    rows = [(name, s["models"][name], timings.get(name), calibrations.get(name, {}).get("models", {}).get(name))
            for name, s in summaries.items()]  # fmt: skip
    for ref in (references or {}).values():
        cal = {"ged": {"ged": ref["eq7"]}, "mode_calibration": {}} if ref.get("eq7") is not None else None
        flat = {"metrics": {"ged": [{"S": s, "mean": ref["ged"]} for s in (1, 4, 8, 16)]}}
        rows.append((ref["label"], flat, None, cal))
    rows.append(("oracle", any_summary["models"]["oracle"], None, any_cal and any_cal["models"]["oracle"]))
    if any_cal:
        s_ged, s_cal = any_cal.get("ged_num_samples", any_cal["num_samples"]), any_cal["num_samples"]
        extra = f"Eq. 7 GED² S={s_ged} | mode r S={s_cal} | modes hit S={s_cal}"
    else:
        extra = "presence accuracy"
    lines = [
        f"{title}, {any_summary['num_images']} images; {any_summary['estimator']}; lower GED is better.",
        "",
        f"| model | GED² S=1 | S=4 | S=8 | S=16 | matched IoU S=16 | {extra} | p vs probunet (S=16) | minutes |",
        "|---|---|---|---|---|---|---|---|---|" + ("---|---|" if calibrations else ""),
    ]
    for name, summary, seconds, cal in rows:
        values = [_metric(summary, "ged", s) for s in (1, 4, 8, 16)] + [_metric(summary, "matched_iou", 16)]
        if calibrations:
            mc = cal["mode_calibration"] if cal else {}
            values += [cal["ged"]["ged"] if cal else None, mc.get("pearson_r")]
        else:
            values.append(summary.get("presence", {}).get("test_accuracy"))
        cells = [f"{v:.3f}" if v is not None else "–" for v in values]
        if calibrations:
            cells.append(f"{mc['modes_hit']}/{mc['num_patterns']}" if mc else "–")
        cells.append(f"{p_values[name]:.2g}" if name in p_values else "–")
        minutes = f"{seconds / 60:.1f}" if seconds is not None else "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {minutes} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except (BundleInputError, ConfigValueError, OutputFolderError, FileNotFoundError, FileExistsError,
            NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if "--report" in sys.argv:  # it trains nothing; it scores only what is not scored yet
            print("compare.py: interrupted by Ctrl-C; the same command continues.", file=sys.stderr)
        else:
            print("compare.py: interrupted by Ctrl-C; the same command with --resume continues every training where "
                  "it stopped.", file=sys.stderr)  # fmt: skip
        sys.exit(EXIT_INTERRUPTED)
