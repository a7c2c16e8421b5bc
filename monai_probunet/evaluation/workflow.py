"""The evaluation workflow of a checkpoint (what ``bundle/configs/evaluate.yaml`` runs): evaluate, fit, write, plot."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..bundle_utils import ConfigValueError, folder_write_problem
from ..data.disk_format import SPLITS, load_datalist
from ..engines.precision import explain_precision
from ..io_utils import staged_dir
from ..metrics import PresenceThreshold
from ..metrics.oracle import ORACLE
from ..metrics.presence import load_presence_threshold
from ..metrics.references import best_single_answer
from ..model_loading import PRESENCE_THRESHOLD_NAME, load_trained_network, weights_sha256
from ..networks import ProbUNet
from ..sampling import OracleSampler
from ..visualize import ged_vs_samples, label_sample_grid, latent_grid, presence_histogram, sample_grid
from .evaluator import evaluate, fit_presence, presence_counts, reference_rows
from .results import (
    PER_IMAGE_CSV,
    SUMMARY_JSON,
    compare,
    is_evaluation_folder,
    save_presence_threshold,
    write_per_image_csv,
    write_summary_json,
)
from .scoring import ESTIMATOR, resolve_classes

__all__ = ["default_model_name", "run_evaluation"]

logger = logging.getLogger("monai_probunet.evaluation")


def default_model_name(ckpt_dir: str | Path, ensemble_ckpts: Sequence[str] | None = None) -> str:
    """A short model name: ``unet_ensemble<K>`` for an ensemble, else the checkpoint folder's name
    (``mheads``, ``fixed_prior``, ...), ``probunet`` for the default ``models`` folder."""
    if ensemble_ckpts:
        return f"unet_ensemble{len(ensemble_ckpts)}"
    base = Path(ckpt_dir).name
    return "probunet" if base in ("", "models") else base


def _checked_splits(eval_split: str, threshold_split: str | None) -> str | None:
    """``threshold_split`` with ``"null"`` / ``"none"`` (how the bundle CLI passes YAML's null) read as ``None``;
    raises :class:`ConfigValueError` naming the option for a split the datalist cannot have."""
    if isinstance(threshold_split, str) and threshold_split.strip().lower() in ("", "null", "none"):
        threshold_split = None
    if eval_split not in SPLITS:
        raise ConfigValueError(f"--eval_split: expected one of {', '.join(SPLITS)}, got {eval_split!r}.")
    if threshold_split is not None and threshold_split not in SPLITS:
        expected = f"one of {', '.join(SPLITS)} or null (no presence rule)"
        raise ConfigValueError(f"--threshold_split: expected {expected}, got {threshold_split!r}.")
    return threshold_split


def _checked_counts(sample_counts: Any, batch_size: Any, num_plot_images: Any, bootstrap_resamples: Any) -> None:
    """Refuse, naming the option, a count of the evaluation that is not a whole number of its range (``--sample_counts
    16`` for ``[16]``, ``--eval_batch_size 0``), before the model is loaded."""

    def whole(value: Any, least: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    if isinstance(sample_counts, (str, bytes)) or not isinstance(sample_counts, Sequence) or not sample_counts or \
            not all(whole(s, 1) for s in sample_counts):
        raise ConfigValueError("--sample_counts: expected a list of whole numbers >= 1 such as \"[1, 4, 8, 16]\", "
                               f"got {sample_counts!r}.")
    for key, value, least in (("eval_batch_size", batch_size, 1), ("num_plot_images", num_plot_images, 0),
                              ("bootstrap_resamples", bootstrap_resamples, 1)):  # fmt: skip
        if not whole(value, least):
            raise ConfigValueError(f"--{key}: expected a whole number >= {least}, got {value!r}.")


def _plots(results: dict, summaries: dict, references: dict, thresholds: dict, model: nn.Module, name: str,
           binary: bool, folder: Path) -> None:
    """The evaluation's figures into ``folder``: GED by S, presence histograms, samples, the latent grid."""
    best = references[best_single_answer({k: r["ged"] for k, r in references.items()})]
    ged_vs_samples(summaries, folder / "ged_vs_samples.png", references={best["label"]: best["ged"]})
    for n, r in (results.items() if binary else ()):
        presence_histogram(
            r.presence_counts, r.ambiguous, thresholds.get(n), folder / f"presence_histogram_{n}.png",
            num_samples=r.presence_samples, title=n, split=r.split,
        )
    ex = results[name].examples
    if ex:
        images, graders = torch.stack([e["image"] for e in ex]), torch.stack([e["graders"] for e in ex])
        samples, titles = torch.stack([e["samples"] for e in ex]), [e["case_id"] for e in ex]
        if binary:
            sample_grid(images[:, 0], graders, samples, folder / "samples.png", titles=titles)
        else:  # class colours (Cityscapes palette), RGB images
            label_sample_grid(images, graders, samples, folder / "samples.png", titles=titles, reference_name="grader")
        if isinstance(model, ProbUNet) and model.latent_dim == 2:
            latent_grid(model, ex[0]["image"], folder / "latent_grid.png", graders=ex[0]["graders"])


def _check_threshold_target(path: Path) -> None:
    """Refuse a ``--save_presence_threshold_to`` that would replace a file the evaluation did not write, or that
    cannot be written."""
    if path.is_dir():
        raise ConfigValueError(f"--save_presence_threshold_to {path} is a folder; give a file path such as "
                               f"{path / PRESENCE_THRESHOLD_NAME}.")
    if not path.exists():
        problem = folder_write_problem(path.parent)  # written at the end: refused now, not after the evaluation
        if problem is not None:
            raise ConfigValueError(f"--save_presence_threshold_to {path}: its folder {path.parent} {problem}.")
        return
    try:
        load_presence_threshold(path)
    except (OSError, ValueError):
        raise ConfigValueError(f"--save_presence_threshold_to {path}: the file exists and is not a presence rule "
                               "this program wrote; give a new path or an earlier presence_threshold.json.") from None


def run_evaluation(
    network: nn.Module,
    datalist: str | Path,
    transform: Callable[[dict], dict],
    output_dir: str | Path,
    ckpt_path: str | Path | None = None,
    ensemble_ckpts: Sequence[str | Path] | None = None,
    model_name: str | None = None,
    eval_split: str = "test",
    threshold_split: str | None = "validation",
    sample_counts: Sequence[int] = (1, 4, 8, 16),
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    num_classes: int = 2,
    classes: Sequence[int] | None = None,
    precision: str = "fp32",
    oracle: bool = True,
    num_plot_images: int = 4,
    bootstrap_resamples: int = 10000,
    confidence: float = 0.95,
    threshold_path: str | Path | None = None,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """Evaluate a checkpoint (or a U-Net ensemble) on a split and write CSV, JSON and PNGs into ``output_dir``.

    Loads ``ckpt_path`` into ``network`` (``weights_only=True``), or, with ``ensemble_ckpts``, one copy of
    ``network`` per member checkpoint (:class:`~monai_probunet.networks.UNetEnsemble`). Evaluates it and the oracle
    on ``eval_split`` (:func:`evaluate`), fits the lesion-presence rule on ``threshold_split`` and scores it on
    ``eval_split``, tests the model against the oracle (Wilcoxon, GED at every S).

    Writes into ``output_dir``: ``per_image.csv`` (:func:`write_per_image_csv`), ``summary.json``
    (``{"estimator", "sample_counts", "split", "checkpoint", "precision" (what ``auto`` resolved to, also in the log),
    "models": {name: EvaluationResult.summary() + presence fit},
    "references": {key: {"label", "ged", "ged_eq7"}} (:func:`reference_rows`: the single answers a sampling model
    must beat), "comparisons": [...], "presence_threshold_file"}``), ``ged_vs_samples.png`` (the best
    single answer as a horizontal line), ``presence_histogram_<name>.png``,
    ``samples.png`` (first ``num_plot_images`` test images, 16 samples; class colours when ``num_classes > 2``),
    ``latent_grid.png`` (ProbUNet with a 2-D latent only), and ``presence_threshold.json`` (the model's rule). The
    rule is also written to ``threshold_path`` when one is given (e.g. ``bundle/models/presence_threshold.json``,
    where the inference path looks next to the checkpoint); by default nothing outside ``output_dir`` is
    written, so a shipped threshold changes only when asked. The rule is deterministic (same counts and labels, in
    any order: same rule; ties broken as documented in :func:`~monai_probunet.metrics.fit_presence_threshold`).
    The folder is written whole or not at all: into a temporary sibling, moved into place at the end (a failed run
    leaves the previous evaluation as it was). ``output_dir`` must be new, empty or an earlier evaluation
    (:func:`~.results.is_evaluation_folder`); a folder holding anything else is refused before the evaluation runs
    (:class:`~monai_probunet.io_utils.OutputFolderError`, one line from the bundle command).

    The lesion-presence rule and its histograms are for binary masks (``num_classes == 2``); with more classes
    they are skipped. ``ignore_index`` masks sampled pixels in unannotated regions (see :func:`evaluate`).

    Returns:
        The summary dict written to ``summary.json``.
    """
    threshold_split = _checked_splits(eval_split, threshold_split)
    _checked_counts(sample_counts, batch_size, num_plot_images, bootstrap_resamples)
    device = torch.device(device)
    output_dir = Path(output_dir)
    staged = staged_dir(output_dir, is_ours=is_evaluation_folder, what="--output_dir")  # refuses before any work
    if threshold_path:
        _check_threshold_target(Path(threshold_path))
    model = load_trained_network(network, ckpt_path, ensemble_ckpts).to(device).eval()
    name = model_name or default_model_name(Path(ckpt_path).parent if ckpt_path else "", ensemble_ckpts)
    precision, reason = explain_precision(precision, device)  # auto: measured once, said in the log and summary
    logger.info(reason)
    common = dict(seed=seed, device=device, batch_size=batch_size, num_workers=num_workers, precision=precision)

    items = load_datalist(datalist, eval_split)
    logger.info("evaluating %s on %d %s images at S = %s ...", name, len(items), eval_split, list(sample_counts))
    results = evaluate(
        {name: model}, items, transform, sample_counts=sample_counts, num_classes=num_classes, classes=classes,
        oracle=oracle, split=eval_split, keep_examples=num_plot_images, ignore_index=ignore_index, **common,
    )
    summaries = {n: r.summary(bootstrap_resamples, confidence) for n, r in results.items()}
    references = reference_rows(items, transform, resolve_classes(classes, num_classes), ignore_index,
                                batch_size, num_workers)  # fmt: skip

    thresholds: dict[str, PresenceThreshold] = {}
    binary = num_classes == 2
    if threshold_split and not binary:
        logger.info("lesion-presence rule skipped: it is defined for binary masks, num_classes is %d", num_classes)
    if threshold_split and binary:
        val_items = load_datalist(datalist, threshold_split)
        for n, r in results.items():
            sampler = OracleSampler() if n == ORACLE and oracle else model
            val_counts, val_amb = presence_counts(sampler, val_items, transform, r.presence_samples, **common)
            threshold, test_acc = fit_presence(val_counts, val_amb, r)
            thresholds[n] = threshold
            summaries[n]["presence"].update(
                threshold=threshold.to_dict(), fitted_on=threshold_split, num_fit_images=int(len(val_counts)),
                validation_accuracy=threshold.accuracy, test_accuracy=test_acc,
            )
    threshold_files = [output_dir / PRESENCE_THRESHOLD_NAME] if name in thresholds else []
    if name in thresholds and threshold_path:
        threshold_files.append(Path(threshold_path))

    comparisons = []
    if oracle and name != ORACLE:
        for s in results[name].sample_counts:
            comparisons.append(compare(results[name], results[ORACLE], "ged", s))
    summary = {
        "estimator": ESTIMATOR,
        "sample_counts": list(results[name].sample_counts),
        "split": eval_split,
        "num_images": results[name].num_images,
        "checkpoint": [str(p) for p in ensemble_ckpts] if ensemble_ckpts else str(ckpt_path),
        "precision": precision,
        "models": summaries,
        "references": references,
        "comparisons": comparisons,
        "presence_threshold_files": [str(p) for p in threshold_files],
    }
    with staged as tmp:
        if name in thresholds:
            t_acc = summaries[name]["presence"]["test_accuracy"]
            extra = dict(model=name, test_accuracy=t_acc, fitted_on=threshold_split, evaluated_on=eval_split)
            if ckpt_path and not ensemble_ckpts:  # the weights it was fitted for: a retrained model does not use it
                extra["weights_sha256"] = weights_sha256(ckpt_path)
            save_presence_threshold(thresholds[name], tmp / PRESENCE_THRESHOLD_NAME, **extra)
        write_per_image_csv(results, tmp / PER_IMAGE_CSV)
        write_summary_json(summary, tmp / SUMMARY_JSON)
        _plots(results, summaries, references, thresholds, model, name, binary, tmp)
    if name in thresholds and threshold_path:  # outside the folder: once the folder is in place
        save_presence_threshold(thresholds[name], threshold_path, **extra)
        logger.info("presence rule (%d < count < %d) also written to %s", thresholds[name].low,
                    thresholds[name].high, threshold_path)
    for n, s in summaries.items():
        ged = {e["S"]: e["mean"] for e in s["metrics"]["ged"]}
        accuracy = s["presence"].get("test_accuracy")
        rule = "no presence rule" if accuracy is None else f"presence accuracy on the {eval_split} split {accuracy:.3f}"
        logger.info("%s: GED^2 by S %s; %s", n, ged, rule)
    for key, r in references.items():
        label = r["label"] if key == "empty" else f"{r['label']} repeated"
        eq7 = "" if r["ged_eq7"] in (None, r["ged"]) else f" (against the known modes {r['ged_eq7']:.4f})"
        logger.info("reference, %s: GED^2 %.4f at every S%s", label, r["ged"], eq7)
    logger.info("evaluation written to %s", os.fspath(output_dir))
    return summary
