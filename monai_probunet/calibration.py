"""The calibration workflow of the class-flipping task (paper Fig. 5, Appendix C): sample, score, write, plot.

- :func:`evaluate_calibration`: sample S label maps per image (a model, or the oracle that draws the true modes) on
  a split whose datalist entries carry ``modes``, ``mode_probs`` and ``mode_patterns`` (``scenes32``, or Cityscapes
  written by ``python -m preprocessing.cityscapes``) and gather Eq. 7 GED, mode matches and pixel marginals
  (:class:`~monai_probunet.metrics.calibration.CalibrationAccumulator`).
- :func:`evaluate_posterior_flips`: for a model with a posterior net, whether its posterior mean carries each flip
  (every mode of every image encoded and decoded; 0.5 per flip means the latent ignores it).
- :func:`run_calibration`: all of it for a checkpoint, written to ``output_dir`` (what
  ``bundle/configs/scenes32_evaluate.yaml`` adds to the ``evaluating`` run): ``calibration.json``,
  ``mode_calibration.png``, ``pixel_marginals.png``, ``calibration_samples.png``.

Images are loaded and sampled by :mod:`monai_probunet.sampling` (the loop evaluation uses too), the metrics live in
:mod:`monai_probunet.metrics.calibration`, the figures in :mod:`monai_probunet.visualize`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .data.disk_format import load_datalist
from .engines.precision import autocast_context
from .evaluation import write_summary_json
from .flip_task import FLIPS, IGNORE_INDEX, SWITCHABLE_CLASSES, enumerate_modes
from .metrics.calibration import CalibrationAccumulator, flip_recovery_counts
from .metrics.known_mixture import match_modes
from .model_loading import load_trained_network
from .networks.utils import hypotheses_to_labels
from .sampling import ORACLE, OracleSampler, case_batches, sample_batches
from .visualize import label_sample_grid, mode_calibration_plot, pixel_marginals_plot

__all__ = [
    "CALIBRATION_JSON",
    "ORACLE",
    "evaluate_calibration",
    "evaluate_posterior_flips",
    "run_calibration",
]

logger = logging.getLogger(__name__)

CALIBRATION_JSON = "calibration.json"


def _check_modes(items: Sequence[Mapping[str, Any]]) -> None:
    """Every entry must carry the known modes, their probabilities and flip patterns (one line naming the entry)."""
    for k, item in enumerate(items):
        missing = [key for key in ("image", "modes", "mode_probs", "mode_patterns") if key not in item]
        if missing:
            raise ValueError(
                f"datalist entry {item.get('case_id', f'#{k}')} has no {missing}: the calibration analysis needs the "
                "known modes, their probabilities and the flip patterns they stand for (scenes32, "
                "preprocessing.cityscapes)."
            )


def evaluate_calibration(
    model: nn.Module | str,
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    num_samples: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    precision: str = "fp32",
    flips: Sequence[tuple[int, int, float, str]] = FLIPS,
    classes: Sequence[int] = SWITCHABLE_CLASSES,
    ignore_index: int | None = IGNORE_INDEX,
    examples: list[dict[str, Any]] | None = None,
    num_examples: int = 4,
    ged_samples: int | None = None,
) -> CalibrationAccumulator:
    """Sample every image of ``items`` and gather the calibration analysis.

    Args:
        model: a network with ``sample(image, num_samples, generator=...)`` returning logits ``B x S x C x *spatial``,
            or ``"oracle"`` (draws i.i.d. from the image's modes with ``mode_probs``, generator seeded per image).
        items: datalist entries (:func:`~monai_probunet.data.load_datalist`) with ``modes``, ``mode_probs``,
            ``mode_patterns``.
        transform: deterministic dict transform giving ``image`` ``C x *spatial`` and ``label`` one channel per file
            (the bundle's ``load_transforms``); the mode files go through it as ``label``.
        num_samples: S per image (the paper: 16).
        seed: seed of the model's sampling generator (once) / of the oracle (per image).
        device: where sampling and distances run.
        batch_size: images per forward pass.
        precision: autocast for sampling (``"fp32"``, ``"bf16"``, ``"auto"``).
        flips, classes, ignore_index: the task (default: the paper's Cityscapes flips, 10 switchable classes, 255).
        examples: if a list, the first ``num_examples`` images are appended to it as ``{"case_id", "image"
            (C x *spatial), "modes" (up to 4, the most probable first), "samples" (up to 8)}`` for figures.
        num_examples: how many images to keep in ``examples``.
        ged_samples: Eq. 7 GED from the first ``ged_samples`` of the S samples (``None``: all S); mode frequencies
            and pixel marginals always use all S.

    Returns:
        The filled :class:`~monai_probunet.metrics.calibration.CalibrationAccumulator`.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples} and {batch_size}.")
    if isinstance(model, str) and model != ORACLE:
        raise ValueError(f"a model given by name must be {ORACLE!r}, got {model!r}.")
    _check_modes(items)
    if not items:
        raise ValueError("items is empty: nothing to evaluate.")
    acc = CalibrationAccumulator(flips, classes, ignore_index, ged_samples=ged_samples)
    sampler = OracleSampler() if isinstance(model, str) else model
    for group, t, sampled in sample_batches({"model": sampler}, items, transform, num_samples, seed, device,
                                            batch_size, precision=precision, with_graders=False):  # fmt: skip
        samples = sampled["model"]
        acc.update(samples, t["modes"], t["weights"].cpu(), [c.patterns for c in group],
                   [c.modes.shape[0] for c in group])  # fmt: skip
        if examples is not None:
            for b, c in enumerate(group):
                if c.index < num_examples:
                    top = torch.argsort(c.probs, descending=True, stable=True)[:4]
                    examples.append({"case_id": c.case_id, "image": c.image, "modes": c.modes[top],
                                     "samples": samples[b, :8].cpu()})  # fmt: skip
    return acc


def evaluate_posterior_flips(
    model: nn.Module,
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    flips: Sequence[tuple[int, int, float, str]] = FLIPS,
    classes: Sequence[int] = SWITCHABLE_CLASSES,
    ignore_index: int | None = IGNORE_INDEX,
) -> dict[str, Any]:
    """Does the posterior encode each flip? Every mode of every image goes through the posterior mean and the decoder.

    Separates the two ways a model misses a flip's frequency: if the reconstruction gets flip ``k`` right (accuracy
    near 1) but samples from the prior turn it on too rarely, the prior does not cover the posterior's region for it;
    at 0.5 the latent carries nothing about the flip (each mode counts once and half of them have it on), so no
    prior could sample it. Per flip, see :func:`~monai_probunet.metrics.calibration.flip_recovery_counts`.

    Args:
        model: a network with ``posterior(image, seg)`` (a distribution with ``mean`` ``B x N``) and
            ``decode(image, z)`` (``z`` ``B x S x N`` -> logits ``B x S x C x *spatial``), e.g.
            :class:`~monai_probunet.networks.ProbUNet`.
        items, transform: as for :func:`evaluate_calibration`.
        device, precision: where and in which autocast the model runs.
        flips, classes, ignore_index: the task (default: the paper's Cityscapes flips).

    Returns:
        ``{"flip_names" K, "flip_accuracy" K (None where a flip is never visible), "mode_accuracy" (fraction of
        modes reconstructed as themselves), "num_modes"}``.
    """
    if not (hasattr(model, "posterior") and hasattr(model, "decode")):
        raise TypeError(f"{type(model).__name__} has no posterior(image, seg) and decode(image, z) to probe.")
    device = torch.device(device)
    model.eval()
    patterns = [b for b, _ in enumerate_modes([f[2] for f in flips])]
    correct, total = np.zeros(len(flips), np.int64), np.zeros(len(flips), np.int64)
    same, count = 0, 0
    _check_modes(items)
    for (case,) in case_batches(items, transform, batch_size=1, with_graders=False):
        modes = case.modes.to(device)  # M x *spatial
        image = case.image[None].to(device)
        with torch.no_grad(), autocast_context(precision, device):
            z = model.posterior(image.expand(modes.shape[0], *image.shape[1:]), modes[:, None]).mean
            recon = hypotheses_to_labels(model.decode(image, z[None].float()))  # 1 x M x *spatial
        matched = match_modes(recon, modes[None], classes=classes, ignore_index=ignore_index)[0]
        c, t = flip_recovery_counts(matched, case.patterns, patterns)
        correct, total = correct + c, total + t
        same += int((matched.cpu() == torch.arange(modes.shape[0])).sum())
        count += modes.shape[0]
    if count == 0:
        raise ValueError("items is empty: nothing to probe.")
    return {
        "flip_names": [f[3] for f in flips],
        "flip_accuracy": [float(c / t) if t else None for c, t in zip(correct, total)],
        "mode_accuracy": same / count,
        "num_modes": count,
    }


def _pad_stack(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack ``A_i x H x W`` maps into ``N x max(A_i) x H x W``, padding by repeating each one's last map."""
    a = max(m.shape[0] for m in maps)
    return torch.stack([torch.cat([m, m[-1:].expand(a - m.shape[0], *m.shape[1:])]) for m in maps])


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def run_calibration(
    network: nn.Module,
    datalist: str | Path,
    transform: Callable[[dict], dict],
    output_dir: str | Path,
    ckpt_path: str | Path | None = None,
    ensemble_ckpts: Sequence[str | Path] | None = None,
    model_name: str = "probunet",
    eval_split: str = "test",
    num_samples: int = 16,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    precision: str = "fp32",
    oracle: bool = True,
    classes: Sequence[int] = SWITCHABLE_CLASSES,
    ignore_index: int | None = IGNORE_INDEX,
    num_plot_images: int = 4,
    ged_samples: int | None = None,
) -> dict[str, Any]:
    """Calibration analysis of a checkpoint (and the oracle) on a split; writes JSON and the two figures.

    Writes into ``output_dir``: ``calibration.json`` (``{"split", "num_samples", "ged_num_samples", "models": {name:
    CalibrationAccumulator.summary()}}``: Eq. 7 GED, Pearson r of mode frequencies vs probabilities, modes hit,
    per-pattern frequencies, pixel marginals; for a model with a posterior net also ``"posterior_probe"``, see
    :func:`evaluate_posterior_flips`), ``mode_calibration.png``, ``pixel_marginals.png`` and
    ``calibration_samples.png`` (the first ``num_plot_images`` images: RGB image, its most probable modes and 8
    samples in the Cityscapes colours, :func:`label_sample_grid`).

    Args:
        network: the configured network (``network_def``); ``ckpt_path`` is loaded into it (``weights_only``).
        datalist: path of ``datalist.json``.
        transform: the bundle's ``load_transforms`` (as for :func:`evaluate_calibration`).
        output_dir: output folder.
        ckpt_path: checkpoint (``model.pt``); ``None`` (and no ``ensemble_ckpts``) evaluates ``network`` as it is.
        ensemble_ckpts: member checkpoints of a U-Net ensemble (instead of ``ckpt_path``).
        model_name: name in the outputs.
        eval_split: datalist split.
        oracle: also analyse the oracle (true modes at their true probabilities) as a reference.
        num_samples, seed, device, batch_size, precision, classes, ignore_index: see :func:`evaluate_calibration`.
        num_plot_images: images in ``calibration_samples.png`` (0: no figure).
        ged_samples: Eq. 7 GED from the first ``ged_samples`` of the ``num_samples`` samples per image (``None``:
            all), so the frequencies can be counted over more samples than the GED's S = 16.

    Returns:
        The dict written to ``calibration.json``.
    """
    device = torch.device(device)
    if ckpt_path is not None or ensemble_ckpts:
        network = load_trained_network(network, ckpt_path, ensemble_ckpts)
    network = network.to(device).eval()
    items = load_datalist(datalist, eval_split)
    common = dict(num_samples=num_samples, seed=seed, device=device, batch_size=batch_size, precision=precision,
                  classes=classes, ignore_index=ignore_index, ged_samples=ged_samples)  # fmt: skip
    samplers: dict[str, nn.Module | str] = {model_name: network}
    if oracle:
        samplers[ORACLE] = ORACLE
    examples: list[dict[str, Any]] = []
    accs = {
        name: evaluate_calibration(s, items, transform, examples=examples if name == model_name else None,
                                   num_examples=num_plot_images, **common)
        for name, s in samplers.items()
    }  # fmt: skip
    summaries = {name: acc.summary() for name, acc in accs.items()}
    if hasattr(network, "posterior") and hasattr(network, "decode"):
        summaries[model_name]["posterior_probe"] = evaluate_posterior_flips(
            network, items, transform, device=device, precision=precision, classes=classes, ignore_index=ignore_index
        )
    out = {
        "split": eval_split,
        "num_samples": num_samples,
        "ged_num_samples": next(iter(summaries.values()))["ged_num_samples"],
        "checkpoint": [str(p) for p in ensemble_ckpts] if ensemble_ckpts else (ckpt_path and str(ckpt_path)),
        "models": summaries,
    }
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_summary_json(out, output_dir / CALIBRATION_JSON)
    mode_calibration_plot({n: a.mode_calibration() for n, a in accs.items()}, output_dir / "mode_calibration.png")
    pixel_marginals_plot({n: a.pixel_marginals() for n, a in accs.items()}, output_dir / "pixel_marginals.png")
    if examples:
        label_sample_grid(
            torch.stack([e["image"] for e in examples]), _pad_stack([e["modes"] for e in examples]),
            torch.stack([e["samples"] for e in examples]), output_dir / "calibration_samples.png",
            titles=[e["case_id"] for e in examples], reference_name="mode",
        )
    for name, s in out["models"].items():
        mc = s["mode_calibration"]
        logger.info(
            "%s: Eq. 7 GED^2 (S = %d) %.4f; mode frequencies (S = %d) vs probabilities r = %.3f (%.3f with the flips "
            "untied), %d/%d modes hit; flips on in samples %s (true %s)",
            name, out["ged_num_samples"], s["ged"]["ged"], num_samples, mc["pearson_r"], mc["independent_pearson_r"],
            mc["modes_hit"], mc["num_patterns"], _fmt(mc["sampled_flip_probs"]), _fmt(mc["true_flip_probs"]),
        )  # fmt: skip
        if "posterior_probe" in s:
            probe = s["posterior_probe"]
            logger.info(
                "%s: posterior mean decoded back to its own mode %.3f of the time; per flip %s (0.5: not encoded)",
                name, probe["mode_accuracy"], _fmt([np.nan if v is None else v for v in probe["flip_accuracy"]]),
            )  # fmt: skip
    logger.info("calibration analysis written to %s", output_dir)
    return out
