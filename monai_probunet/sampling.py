"""One case loader and one sampling loop for evaluation, calibration and the lesion-presence fit.

:func:`case_batches` turns datalist entries into :class:`Case` objects (image, grader masks, the known modes with
their probabilities and flip patterns where the datalist has them) in batches that stack; :func:`sample_batches`
draws S label maps per image from every sampler of a run for each batch. Every model's generator is seeded once
per run, the oracle's per image (:func:`image_seed`), so with the same seed, data order and ``batch_size`` the
samples are the same whichever workflow asks for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .engines.precision import autocast_context
from .metrics.known_mixture import mask_ignored
from .metrics.oracle import ORACLE, sample_modes
from .networks.utils import hypotheses_to_labels

__all__ = [
    "ORACLE",
    "Case",
    "CaseDataset",
    "OracleSampler",
    "Sampler",
    "case_batches",
    "image_seed",
    "model_labels",
    "prepare_items",
    "sample_batches",
    "stack_cases",
]


def image_seed(seed: int, index: int) -> int:
    """The sampling seed of the ``index``-th image of a run seeded with ``seed`` (independent of batching)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0] >> 1)


class OracleSampler:
    """Pseudo-model drawing from the true ground-truth distribution of each image.

    Draws i.i.d. from the known modes with ``mode_probs`` where the datalist has them, else uniformly from the
    image's grader masks. Image ``k`` of a split uses its own generator seeded with ``(seed, k)``, so the draws do
    not depend on batching.
    """

    name = ORACLE

    def sample_labels(
        self,
        graders: torch.Tensor,
        modes: list[torch.Tensor | None],
        probs: list[torch.Tensor | None],
        indices: Sequence[int],
        num_samples: int,
        seed: int,
    ) -> torch.Tensor:
        """Draw S label maps per image.

        Args:
            graders: ``B x A x *spatial`` grader masks.
            modes: per image ``M x *spatial`` modes, or ``None`` (unknown distribution).
            probs: per image ``M`` mode probabilities, or ``None``.
            indices: per image its index in the split (seeds its generator).
            num_samples: S.
            seed: evaluation seed.

        Returns:
            ``B x S x *spatial`` label maps on ``graders``' device.
        """
        out = []
        for b, k in enumerate(indices):
            gen = torch.Generator().manual_seed(image_seed(seed, k))
            if modes[b] is not None:
                draws = sample_modes(modes[b].cpu(), probs[b].cpu(), num_samples, gen)
            else:
                a = graders.shape[1]
                draws = sample_modes(graders[b].cpu(), torch.full((a,), 1.0 / a, dtype=torch.float64), num_samples, gen)
            out.append(draws)
        return torch.stack(out).to(graders.device)


#: a network with ``sample(image, num_samples, generator=...)`` or the oracle
Sampler = nn.Module | OracleSampler


def model_labels(
    model: nn.Module, images: torch.Tensor, num_samples: int, generator: torch.Generator, precision: str
) -> torch.Tensor:
    """Arg-max labels of ``model.sample(images, S, generator=generator)``.

    Args:
        model: a network with ``sample(image, num_samples, generator)`` returning ``B x S x C x *spatial`` logits.
        images: ``B x C_in x *spatial``.
        num_samples: S.
        generator: the run's sampling generator (advanced by the call).
        precision: autocast for sampling (``"fp32"``, ``"bf16"``, ``"auto"``).

    Returns:
        ``B x S x *spatial`` int64 labels.
    """
    if not hasattr(model, "sample"):
        raise TypeError(f"{type(model).__name__} has no sample(image, num_samples, generator) method.")
    with torch.no_grad(), autocast_context(precision, images.device):
        logits = model.sample(images, num_samples, generator=generator)
    return hypotheses_to_labels(logits)


@dataclass
class Case:
    """One loaded datalist entry.

    Attributes:
        index: position in the split (seeds the oracle).
        case_id: the entry's ``case_id`` (its index when it has none).
        image: ``C x *spatial`` float32.
        graders: ``A x *spatial`` int64 grader masks.
        modes: ``M x *spatial`` int64 known modes, or ``None`` (distribution unknown).
        probs: ``M`` float64 mode probabilities, or ``None``.
        patterns: per mode its flip pattern (``mode_patterns``), or ``None``.
    """

    index: int
    case_id: str
    image: torch.Tensor
    graders: torch.Tensor
    modes: torch.Tensor | None
    probs: torch.Tensor | None
    patterns: list[list[int]] | None = None


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def prepare_items(items: Sequence[Mapping[str, Any]], with_graders: bool = True) -> list[dict[str, Any]]:
    """Check datalist entries and turn them into transform inputs.

    Graders and modes ride together in ``label`` (one channel per file), split again after loading.

    Args:
        items: datalist entries with ``image``, ``label`` (A grader files) and optionally ``modes`` +
            ``mode_probs`` (+ ``mode_patterns``) and ``case_id``.
        with_graders: load the grader masks; ``False`` loads the modes only (``A = 0``, no ``label`` needed).

    Returns:
        one dict per entry: ``data`` (the transform input), ``index``, ``case_id``, ``num_graders``, ``probs``,
        ``patterns``.

    Raises:
        ValueError: an entry without ``image`` / ``label``, or with modes, probabilities and patterns that do not
            match; the message names the entry.
    """
    out = []
    for k, item in enumerate(items):
        case = item.get("case_id", f"#{k}")
        for key in ("image", "label") if with_graders else ("image",):
            if key not in item:
                raise ValueError(f"datalist entry {case} (index {k}) has no {key!r} key.")
        labels = _as_list(item["label"]) if with_graders else []
        modes, probs, patterns = item.get("modes"), item.get("mode_probs"), item.get("mode_patterns")
        if (modes is None) != (probs is None):
            raise ValueError(f"datalist entry {case}: 'modes' and 'mode_probs' must be given together.")
        if modes is not None:
            modes = _as_list(modes)
            if len(modes) != len(probs) or not modes:
                raise ValueError(
                    f"datalist entry {case}: 'modes' ({len(modes)} files) and 'mode_probs' ({len(probs)} values) "
                    "must be non-empty and of equal length."
                )
            if patterns is not None and len(patterns) != len(modes):
                raise ValueError(f"datalist entry {case}: modes, mode_probs and mode_patterns differ in length.")
        out.append(
            {
                "data": {"image": item["image"], "label": labels + (modes or [])},
                "index": k,
                "case_id": str(item.get("case_id", k)),
                "num_graders": len(labels),
                "probs": None if probs is None else [float(p) for p in probs],
                "patterns": None if patterns is None or modes is None else [list(g) for g in patterns],
            }
        )
    return out


class CaseDataset(Dataset):
    """:func:`prepare_items` output through a deterministic transform, as :class:`Case` objects.

    Args:
        prepared: :func:`prepare_items` output.
        transform: dict transform giving ``image`` ``C x *spatial`` and ``label`` one channel per file (the bundle's
            ``load_transforms``).
    """

    def __init__(self, prepared: list[dict[str, Any]], transform: Callable[[dict], dict]) -> None:
        self.prepared, self.transform = prepared, transform

    def __len__(self) -> int:
        return len(self.prepared)

    def __getitem__(self, i: int) -> Case:
        p = self.prepared[i]
        d = self.transform(dict(p["data"]))
        image, label = torch.as_tensor(d["image"]), torch.as_tensor(d["label"])
        a = p["num_graders"]
        if label.shape[0] != len(p["data"]["label"]):
            raise ValueError(
                f"case {p['case_id']}: the transform gave {label.shape[0]} label channels for "
                f"{len(p['data']['label'])} files (graders + modes); it must load each file as one channel."
            )
        label = label.round().long()
        probs = None if p["probs"] is None else torch.tensor(p["probs"], dtype=torch.float64)
        modes = label[a:] if probs is not None else None
        return Case(p["index"], p["case_id"], image.float(), label[:a], modes, probs, p["patterns"])


def _collate_list(batch: list) -> list:
    return batch


def case_batches(
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    batch_size: int = 16,
    num_workers: int = 0,
    with_graders: bool = True,
) -> Iterator[list[Case]]:
    """Load ``items`` in datalist order, in batches of cases that share image shape and grader count (so they stack).

    Args:
        items: datalist entries (see :func:`prepare_items`).
        transform: see :class:`CaseDataset`.
        batch_size: entries loaded together; a loaded batch is split where shapes differ.
        num_workers: data-loading workers.
        with_graders: see :func:`prepare_items`.

    Yields:
        lists of :class:`Case`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    loader = DataLoader(
        CaseDataset(prepare_items(items, with_graders), transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate_list,
    )
    for batch in loader:
        groups: dict[tuple, list[Case]] = {}
        for case in batch:
            groups.setdefault((tuple(case.image.shape), tuple(case.graders.shape)), []).append(case)
        yield from groups.values()


def stack_cases(group: list[Case], device: torch.device) -> dict[str, torch.Tensor]:
    """Stack a batch from :func:`case_batches`.

    Returns:
        ``images`` ``B x C x *spatial``, ``graders`` ``B x A x *spatial``, ``modes`` ``B x M x *spatial`` (zero-padded
        to the batch's largest M; ``M = 0`` allowed), ``weights`` ``B x M`` float64 (0 on padding), ``has_modes``
        ``B`` bool, all on ``device``.
    """
    images = torch.stack([c.image for c in group]).to(device)
    graders = torch.stack([c.graders for c in group]).to(device)
    m = max((0 if c.modes is None else c.modes.shape[0]) for c in group)
    modes = torch.zeros((len(group), m, *graders.shape[2:]), dtype=torch.long, device=device)
    weights = torch.zeros((len(group), m), dtype=torch.float64, device=device)
    for b, c in enumerate(group):
        if c.modes is not None:
            if c.modes.shape[1:] != graders.shape[2:]:
                raise ValueError(f"case {c.case_id}: modes {tuple(c.modes.shape)} and graders differ in shape.")
            modes[b, : c.modes.shape[0]] = c.modes.to(device)
            weights[b, : c.modes.shape[0]] = c.probs.to(device)
    has_modes = torch.tensor([c.modes is not None for c in group], device=device)
    return {"images": images, "graders": graders, "modes": modes, "weights": weights, "has_modes": has_modes}


def sample_batches(
    samplers: Mapping[str, Sampler],
    items: Sequence[Mapping[str, Any]],
    transform: Callable[[dict], dict],
    num_samples: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_workers: int = 0,
    precision: str = "fp32",
    ignore_index: int | None = None,
    with_graders: bool = True,
) -> Iterator[tuple[list[Case], dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """The sampling loop: S label maps per image from every sampler, batch by batch; each image is loaded once.

    Args:
        samplers: ``{name: sampler}``: networks with ``sample(image, num_samples, generator=...)`` (put in eval mode,
            one generator each seeded with ``seed``) or :class:`OracleSampler` (seeded per image).
        items: datalist entries (see :func:`prepare_items`).
        transform: see :class:`CaseDataset`.
        num_samples: S.
        seed: sampling seed.
        device: where sampling runs and the stacked tensors live.
        batch_size, num_workers: see :func:`case_batches`.
        precision: autocast for sampling (``"fp32"``, ``"bf16"``, ``"auto"``).
        ignore_index: label of unannotated regions: a network's sampled pixels where the graders have it are set to
            it as well (:func:`~monai_probunet.metrics.known_mixture.mask_ignored`); ``None``: no masking.
        with_graders: see :func:`prepare_items` (without graders every image needs its modes).

    Yields:
        ``(cases, stacked, samples)``: the batch's :class:`Case` list, :func:`stack_cases` of it and ``{name:
        B x S x *spatial}`` labels.
    """
    device = torch.device(device)
    generators: dict[str, torch.Generator] = {}
    for name, model in samplers.items():
        if isinstance(model, nn.Module):
            if not hasattr(model, "sample"):
                raise TypeError(f"{type(model).__name__} has no sample(image, num_samples, generator) method.")
            model.eval()
            generators[name] = torch.Generator(device=device).manual_seed(int(seed))
    for group in case_batches(items, transform, batch_size, num_workers, with_graders):
        stacked = stack_cases(group, device)
        samples = {}
        for name, model in samplers.items():
            if isinstance(model, OracleSampler):
                samples[name] = model.sample_labels(
                    stacked["graders"],
                    [c.modes for c in group],
                    [c.probs for c in group],
                    [c.index for c in group],
                    num_samples,
                    seed,
                )
            else:
                labels = model_labels(model, stacked["images"], num_samples, generators[name], precision)
                if ignore_index is not None:
                    labels = mask_ignored(labels, stacked["graders"], ignore_index)
                samples[name] = labels
        yield group, stacked, samples
