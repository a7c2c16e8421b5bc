"""Evaluate models and the oracle on a split (:func:`evaluate`), and the lesion-presence counts the rule is fitted to.

The images are loaded and sampled by :func:`~monai_probunet.sampling.sample_batches` (the loop calibration uses too);
each image's draws are scored by :func:`~.scoring.score_samples`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..metrics import PresenceThreshold, fit_presence_threshold, lesion_presence_counts, presence_ambiguity
from ..metrics.references import mean_reference_geds
from ..sampling import ORACLE, OracleSampler, Sampler, case_batches, sample_batches
from .results import EvaluationResult
from .scoring import METRICS, check_sample_counts, resolve_classes, score_samples

__all__ = ["evaluate", "evaluate_model", "fit_presence", "presence_counts", "reference_rows"]


def evaluate(
    models: Mapping[str, Sampler],
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    sample_counts: Sequence[int] = (1, 4, 8, 16),
    max_samples: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    num_classes: int = 2,
    classes: Sequence[int] | None = None,
    oracle: bool = True,
    precision: str = "fp32",
    presence_samples: int | None = None,
    split: str = "test",
    keep_examples: int = 0,
    ignore_index: int | None = None,
) -> dict[str, EvaluationResult]:
    """Evaluate several models (and the oracle) on the same images; each image is loaded once.

    Args:
        models: ``{name: model}``; a model has ``sample(image, num_samples, generator=...)`` returning logits
            ``B x S x C x *spatial`` (ProbUNet, baselines), or is an :class:`~monai_probunet.sampling.OracleSampler`.
        items: datalist entries (``load_datalist`` output): ``"image"``, ``"label"`` (A grader files), optional
            ``"modes"`` + ``"mode_probs"`` (the true distribution), ``"case_id"``.
        transform: deterministic dict transform giving ``image`` ``C x *spatial`` and ``label`` one channel per file
            (the bundle's ``load_transforms``); grader and mode files go through it together as ``label``.
        sample_counts: the S values scored (nested: the first S of ``max_samples`` draws).
        max_samples: draws per image (default ``max(sample_counts)``).
        seed: each model's sampling generator is seeded with it once (same seed, data order and ``batch_size``:
            same samples); the oracle seeds per image.
        device: where sampling and distances run.
        batch_size: images per forward pass.
        num_workers: data-loading workers.
        num_classes: C; the IoU is averaged over classes ``1 .. C-1`` unless ``classes`` is given.
        classes: classes whose IoU is averaged (``(1,)`` for binary lesion masks).
        oracle: also score the oracle, under the name ``"oracle"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` autocast for sampling.
        presence_samples: S of the lesion-presence counts (default ``min(16, max_samples)``).
        split: recorded in the results.
        keep_examples: keep the first this many images' tensors (up to 16 samples) for figures.
        ignore_index: label of unannotated regions (Cityscapes 255): sampled pixels where the graders have it are
            set to it as well, so predictions there count for nothing (paper Appendix H.2). ``None``: no masking.

    Returns:
        ``{name: EvaluationResult}`` (the oracle last).
    """
    counts, smax = check_sample_counts(sample_counts, max_samples)
    cls = resolve_classes(classes, num_classes)
    p_s = min(16, smax) if presence_samples is None else int(presence_samples)
    if not 1 <= p_s <= smax:
        raise ValueError(f"presence_samples must be in [1, max_samples = {smax}], got {p_s}.")
    device = torch.device(device)
    samplers: dict[str, Sampler] = dict(models)
    if oracle:
        if ORACLE in samplers:
            raise ValueError(f"a model is already named {ORACLE!r}; pass oracle=False or rename it.")
        samplers[ORACLE] = OracleSampler()
    if not samplers:
        raise ValueError("nothing to evaluate: pass at least one model or oracle=True.")
    acc: dict[str, dict[str, list]] = {n: {"idx": [], "values": [], "presence": [], "examples": []} for n in samplers}
    meta: dict[int, tuple[str, bool, int, int]] = {}
    batches = sample_batches(
        samplers, items, transform, smax, seed, device, batch_size, num_workers, precision, ignore_index
    )
    for group, t, sampled in batches:
        amb = presence_ambiguity(t["graders"]).cpu()
        for b, c in enumerate(group):
            meta[c.index] = (c.case_id, bool(amb[b]), c.graders.shape[0], 0 if c.modes is None else c.modes.shape[0])
        for name, samples in sampled.items():
            scores = score_samples(samples, t["graders"], t["modes"], t["weights"], t["has_modes"], counts, cls)
            a = acc[name]
            a["idx"] += [c.index for c in group]
            a["values"].append(scores)
            a["presence"].append(lesion_presence_counts(samples[:, :p_s]).cpu())
            for b, c in enumerate(group):
                if c.index < keep_examples:
                    a["examples"].append(
                        {"index": c.index, "case_id": c.case_id, "image": c.image, "graders": c.graders,
                         "samples": samples[b, :16].cpu()}
                    )  # fmt: skip
    if not meta:
        raise ValueError("items is empty: nothing to evaluate.")
    order_ids = sorted(meta)
    results = {}
    for name, a in acc.items():
        order = np.argsort(np.asarray(a["idx"]), kind="stable")
        values = {k: torch.cat([v[k] for v in a["values"]]).numpy()[order] for k in METRICS}
        results[name] = EvaluationResult(
            name=name,
            split=split,
            sample_counts=counts,
            case_ids=[meta[i][0] for i in order_ids],
            values=values,
            ambiguous=np.array([meta[i][1] for i in order_ids], dtype=bool),
            presence_samples=p_s,
            presence_counts=torch.cat(a["presence"]).numpy()[order].astype(np.int64),
            num_graders=np.array([meta[i][2] for i in order_ids], dtype=np.int64),
            num_modes=np.array([meta[i][3] for i in order_ids], dtype=np.int64),
            seed=int(seed),
            classes=cls,
            examples=sorted(a["examples"], key=lambda e: e["index"]),
        )
    return results


def evaluate_model(
    model: Sampler | str,
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    name: str | None = None,
    **kwargs: Any,
) -> EvaluationResult:
    """Evaluate one model (or the oracle: ``model="oracle"``); see :func:`evaluate` for the arguments."""
    if isinstance(model, str):
        if model != ORACLE:
            raise ValueError(f"a model given by name must be {ORACLE!r}, got {model!r}.")
        model = OracleSampler()
    name = name or (ORACLE if isinstance(model, OracleSampler) else type(model).__name__)
    kwargs["oracle"] = False
    return evaluate({name: model}, items, transform, **kwargs)[name]


def presence_counts(
    model: Sampler,
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    num_samples: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    precision: str = "fp32",
) -> tuple[np.ndarray, np.ndarray]:
    """Lesion-presence counts of ``num_samples`` draws and grader ambiguity, per image (no other metric).

    Returns:
        ``(counts N int64 in [0, num_samples], ambiguous N bool)``, datalist order.
    """
    idx, counts, amb = [], [], []
    batches = sample_batches({"model": model}, items, transform, num_samples, seed, device, batch_size, num_workers,
                             precision)  # fmt: skip
    for group, t, sampled in batches:
        idx += [c.index for c in group]
        counts.append(lesion_presence_counts(sampled["model"]).cpu())
        amb.append(presence_ambiguity(t["graders"]).cpu())
    if not idx:
        raise ValueError("items is empty: no presence counts.")
    order = np.argsort(np.asarray(idx), kind="stable")
    return torch.cat(counts).numpy()[order].astype(np.int64), torch.cat(amb).numpy()[order].astype(bool)


def fit_presence(
    val_counts: np.ndarray, val_ambiguous: np.ndarray, result: EvaluationResult
) -> tuple[PresenceThreshold, float]:
    """Fit the Appendix E rule on validation counts and score it on ``result``'s test counts.

    Returns:
        ``(threshold, test_accuracy)``.
    """
    threshold = fit_presence_threshold(val_counts, val_ambiguous, result.presence_samples)
    return threshold, threshold.score(result.presence_counts, result.ambiguous)


def reference_rows(
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    classes: Sequence[int] = (1,),
    ignore_index: int | None = None,
    batch_size: int = 16,
    num_workers: int = 0,
) -> dict[str, dict[str, Any]]:
    """The reference rows of a split (:func:`~monai_probunet.metrics.references.mean_reference_geds`): single answers
    repeated, the GED any sampling model must be below, the same at every S.

    Args:
        items, transform, batch_size, num_workers: as for :func:`evaluate` (the same grader masks it scores against).
        classes: the classes the GED scores (``(1,)``: binary masks).
        ignore_index: the graders' label of unannotated pixels (``None``: none).

    Returns:
        ``{key: {"label", "ged", "ged_eq7"}}``.
    """
    cases = (c for group in case_batches(items, transform, batch_size, num_workers) for c in group)
    return mean_reference_geds(((c.graders, c.modes, c.probs) for c in cases), classes, ignore_index)
