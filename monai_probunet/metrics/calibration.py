"""The paper's Appendix C calibration analysis of the flip task's samples.

For the Cityscapes flip task (paper Sec. 4.2, Appendix B-C) and its synthetic stand-in ``scenes32``; the GED against
the known modes and the masking of ignore pixels are :mod:`monai_probunet.metrics.known_mixture`'s.

- Mode-wise frequencies (Fig. 5, Appendix C): every sample is matched to its closest mode (``d = 1 - IoU`` over the
  switchable classes, ties to the lowest mode index, :func:`match_modes`) and counted for that mode's flip pattern;
  frequencies over all images and samples are compared with the true pattern probabilities (Pearson r, scipy).
  Where an image lacks a flippable class, one stored mode stands for several of the 32 patterns (those that differ
  only in invisible flips, see :func:`~monai_probunet.flip_task.distinct_modes`); a sample matched to such a mode
  is split over its patterns in proportion to their probabilities (:func:`attribute_patterns`; for those images the
  invisible bits are not observed, and this split is their expected share). ``exact_*`` values use only the images
  in which every flippable class is visible (all patterns distinct): no attribution at all.
- Pixel-wise marginals (Appendix C): over all pixels whose ground-truth class is a flippable class ``c`` and all
  samples, the fractions predicted as its new class ``c'`` (to compare with the flip probability), as ``c`` itself,
  and as anything else (:func:`pixel_marginal_counts`).

:class:`CalibrationAccumulator` gathers all of it over an evaluation loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..flip_task import FLIPS, IGNORE_INDEX, SWITCHABLE_CLASSES, TRAIN_ID_NAMES, enumerate_modes, unflip
from .ged import GEDTerms
from .known_mixture import known_mixture_ged, mask_ignored, match_modes, reference_map

__all__ = [
    "CalibrationAccumulator",
    "ModeCalibration",
    "PixelMarginals",
    "attribute_patterns",
    "flip_recovery_counts",
    "pixel_marginal_counts",
]

Flip = tuple[int, int, float, str]


def attribute_patterns(
    matches: np.ndarray | torch.Tensor, mode_patterns: Sequence[Sequence[Sequence[int]]], pattern_probs: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Counts of samples per global flip pattern, from their matched modes.

    A sample matched to mode ``j`` of image ``b`` counts ``p_g / sum_{g' in G} p_g'`` for every pattern ``g`` of
    ``G = mode_patterns[b][j]`` (one pattern: a count of 1).

    Args:
        matches: ``B x S`` mode indices (:func:`match_modes`).
        mode_patterns: per image, per mode, the pattern indices the mode stands for.
        pattern_probs: ``P`` true probabilities of the patterns (:func:`~monai_probunet.data.enumerate_modes`).

    Returns:
        ``(counts P float64, exact_counts P float64)``: ``exact_counts`` only from images whose every mode is one
        pattern (all flips visible).
    """
    m = np.asarray(matches.cpu() if isinstance(matches, torch.Tensor) else matches)
    if m.ndim != 2 or m.shape[0] != len(mode_patterns):
        raise ValueError(f"matches must be B x S with B = {len(mode_patterns)} images, got shape {m.shape}.")
    p = np.asarray(pattern_probs, dtype=np.float64)
    counts, exact = np.zeros_like(p), np.zeros_like(p)
    for b, groups in enumerate(mode_patterns):
        hist = np.bincount(m[b], minlength=len(groups))
        if len(hist) > len(groups):
            raise ValueError(f"image {b}: a sample matched mode {m[b].max()} of only {len(groups)} modes.")
        full = all(len(g) == 1 for g in groups)
        for j, group in enumerate(groups):
            if hist[j] == 0:
                continue
            g = np.asarray(group, dtype=np.int64)
            if g.size == 0 or g.min() < 0 or g.max() >= p.size:
                raise ValueError(f"image {b}, mode {j}: pattern indices {list(group)} outside 0..{p.size - 1}.")
            counts[g] += hist[j] * p[g] / p[g].sum()
            if full:
                exact[g] += hist[j]
    return counts, exact


def flip_recovery_counts(
    matches: Sequence[int] | np.ndarray | torch.Tensor,
    mode_patterns: Sequence[Sequence[int]],
    patterns: Sequence[Sequence[int]],
) -> tuple[np.ndarray, np.ndarray]:
    """Per flip, how many of one image's modes came back with that flip right (the posterior-recovery probe).

    Mode ``j`` of the image was encoded (e.g. by the posterior mean) and decoded, and the result matched mode
    ``matches[j]`` (:func:`match_modes`). For every flip ``k`` visible in the image (every stored mode stands for
    patterns that agree on bit ``k``), each mode counts once, correct when the matched mode has the same bit ``k``.
    A model whose latent carries nothing about flip ``k`` gets half of them right, since half of the modes have it on.

    Args:
        matches: ``M`` indices of the mode each mode's reconstruction matched.
        mode_patterns: ``M`` lists of the pattern indices each mode stands for (the datalist's ``mode_patterns``).
        patterns: ``P`` flip patterns (0/1 tuples of length K, :func:`~monai_probunet.data.enumerate_modes` order).

    Returns:
        ``(correct K, total K)`` counts; ``total[k]`` is 0 where flip ``k`` is not visible.
    """
    m = np.asarray(matches.cpu() if isinstance(matches, torch.Tensor) else matches, dtype=np.int64).reshape(-1)
    if m.size != len(mode_patterns) or (m.size and (m.min() < 0 or m.max() >= len(mode_patterns))):
        raise ValueError(f"matches must be {len(mode_patterns)} mode indices in 0..{len(mode_patterns) - 1}, got {m}.")
    bits = np.asarray(patterns, dtype=np.int64)  # P x K
    groups = [bits[np.asarray(g, dtype=np.int64)] for g in mode_patterns]
    visible = np.all([(g == g[0]).all(axis=0) for g in groups], axis=0)  # K
    mode_bits = np.stack([g[0] for g in groups])  # M x K
    correct = (mode_bits[m] == mode_bits).sum(axis=0) * visible
    return correct.astype(np.int64), visible.astype(np.int64) * len(groups)


def pixel_marginal_counts(
    samples: torch.Tensor,
    reference: torch.Tensor,
    flips: Sequence[Flip] = FLIPS,
    ignore_index: int | None = IGNORE_INDEX,
) -> np.ndarray:
    """Pixel counts behind ``p(predicted class | ground-truth class)`` for every flippable class.

    Args:
        samples: ``B x S x *spatial`` sampled label maps.
        reference: ``B x *spatial`` or ``B x A x *spatial`` ground truth (any mode or grader map: it is un-flipped
            with :func:`~monai_probunet.flip_task.unflip`, so the ground-truth class of a pixel is its source
            class).
        flips: ``(source, target, probability, name)`` per flippable class.
        ignore_index: ignore label (``None``: no masking; ignore pixels have no flippable ground truth anyway).

    Returns:
        ``K x 4`` int64: per flip, ``[flipped (sample = target), kept (sample = source), other, total]`` over all
        pixels with ground truth = source, times S samples.
    """
    base = unflip(reference_map(reference, samples.ndim - 2).to(samples.device), flips)
    if ignore_index is not None:
        samples = mask_ignored(samples, base, ignore_index)
    out = np.zeros((len(flips), 4), dtype=np.int64)
    for k, (src, dst, _, _) in enumerate(flips):
        gt = (base == src).unsqueeze(1)  # B x 1 x *spatial
        total = int(gt.sum()) * samples.shape[1]
        flipped = int(((samples == dst) & gt).sum())
        kept = int(((samples == src) & gt).sum())
        out[k] = (flipped, kept, total - flipped - kept, total)
    return out


@dataclass
class ModeCalibration:
    """Mode-wise frequencies of the sampled flip patterns vs their true probabilities (Fig. 5, Appendix C).

    Attributes:
        patterns: ``P`` flip patterns (0/1 tuples, :func:`~monai_probunet.data.enumerate_modes` order).
        true_probs: ``P`` true probabilities.
        counts: ``P`` attributed sample counts over all images (:func:`attribute_patterns`).
        exact_counts: ``P`` counts over the images with every flip visible.
        num_images, num_exact_images: images counted (all / with every flip visible).
        num_samples: samples per image.
    """

    patterns: list[tuple[int, ...]]
    true_probs: np.ndarray
    counts: np.ndarray
    exact_counts: np.ndarray
    num_images: int
    num_exact_images: int
    num_samples: int

    @staticmethod
    def _normalise(c: np.ndarray) -> np.ndarray:
        s = c.sum()
        return c / s if s > 0 else np.full_like(c, np.nan)

    @property
    def frequencies(self) -> np.ndarray:
        """``P`` predicted frequencies (all images, attributed)."""
        return self._normalise(self.counts)

    @property
    def exact_frequencies(self) -> np.ndarray:
        """``P`` predicted frequencies over the images with every flip visible (NaN if there are none)."""
        return self._normalise(self.exact_counts)

    @staticmethod
    def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        from scipy.stats import pearsonr

        if not np.isfinite(y).all() or np.ptp(y) == 0 or np.ptp(x) == 0:
            return float("nan"), float("nan")
        r = pearsonr(x, y)
        return float(r.statistic), float(r.pvalue)

    @property
    def pearson(self) -> tuple[float, float]:
        """``(r, p-value)`` of the frequencies against the true probabilities (scipy ``pearsonr``)."""
        return self._pearson(self.true_probs, self.frequencies)

    @property
    def exact_pearson(self) -> tuple[float, float]:
        """``(r, p-value)`` over the images with every flip visible."""
        return self._pearson(self.true_probs, self.exact_frequencies)

    @property
    def modes_hit(self) -> int:
        """Patterns matched by at least one sample in an image with every flip visible (all images if none)."""
        c = self.exact_counts if self.num_exact_images else self.counts
        return int((c > 0).sum())

    @property
    def observed_frequencies(self) -> np.ndarray:
        """``P`` frequencies over the images with every flip visible, or over all images if there are none (the
        counts :attr:`modes_hit` uses)."""
        return self.exact_frequencies if self.num_exact_images else self.frequencies

    @property
    def flip_marginals(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sampled K, true K)``: how often each of the K flips is on, from :attr:`observed_frequencies` and from
        the true pattern probabilities."""
        bits = np.asarray(self.patterns, dtype=np.float64)  # P x K
        return self.observed_frequencies @ bits, self.true_probs @ bits

    @property
    def flip_correlation(self) -> np.ndarray:
        """``K x K`` Pearson correlation of the sampled flip bits (0 for independent flips as in the data; NaN
        where a flip is always or never on).

        Non-zero off-diagonal entries mean the model ties flips together (e.g. one latent direction for two
        flips), which lowers the mode r even where every marginal is right.
        """
        bits = np.asarray(self.patterns, dtype=np.float64)
        q = self.flip_marginals[0]
        cov = (bits * self.observed_frequencies[:, None]).T @ bits - np.outer(q, q)
        sd = np.sqrt(q * (1.0 - q))
        with np.errstate(divide="ignore", invalid="ignore"):
            corr = cov / np.outer(sd, sd)
        corr[~np.isfinite(corr)] = np.nan
        np.fill_diagonal(corr, 1.0)
        return corr

    @property
    def independent_pearson(self) -> tuple[float, float]:
        """``(r, p-value)`` of the true probabilities against the pattern probabilities that independent flips with
        the sampled marginals would give: the r left once the flips are untied (:attr:`flip_correlation`), so
        ``independent_pearson[0] - pearson[0]`` is what tied flips cost and ``1 - independent_pearson[0]`` what
        wrong marginals cost."""
        bits = np.asarray(self.patterns, dtype=np.float64)
        q = self.flip_marginals[0]
        product = np.prod(np.where(bits == 1, q, 1.0 - q), axis=1)
        return self._pearson(self.true_probs, product)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModeCalibration:
        """Rebuild from :meth:`to_dict` output (e.g. the ``mode_calibration`` entry of ``calibration.json``)."""
        try:
            rows = data["patterns"]
            return cls(
                patterns=[tuple(int(b) for b in row["flips"]) for row in rows],
                true_probs=np.array([row["true_prob"] for row in rows], dtype=np.float64),
                counts=np.array([row["count"] for row in rows], dtype=np.float64),
                exact_counts=np.array([row["exact_count"] for row in rows], dtype=np.float64),
                num_images=int(data["num_images"]),
                num_exact_images=int(data["num_exact_images"]),
                num_samples=int(data["num_samples"]),
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a ModeCalibration dict (missing or malformed {e}).") from e

    def to_dict(self) -> dict[str, Any]:
        r, p = self.pearson
        er, ep = self.exact_pearson
        sampled_flips, true_flips = self.flip_marginals
        corr = self.flip_correlation
        return {
            "num_images": self.num_images,
            "num_exact_images": self.num_exact_images,
            "num_samples": self.num_samples,
            "pearson_r": r,
            "pearson_p": p,
            "exact_pearson_r": er,
            "exact_pearson_p": ep,
            "modes_hit": self.modes_hit,
            "num_patterns": len(self.patterns),
            "total_variation": float(0.5 * np.abs(self.frequencies - self.true_probs).sum()),
            "sampled_flip_probs": [float(v) for v in sampled_flips],
            "true_flip_probs": [float(v) for v in true_flips],
            "flip_correlation": [[None if np.isnan(v) else float(v) for v in row] for row in corr],
            "independent_pearson_r": self.independent_pearson[0],
            "patterns": [
                {"flips": list(b), "true_prob": float(t), "frequency": float(f), "exact_frequency": float(e),
                 "count": float(c), "exact_count": float(x)}
                for b, t, f, e, c, x in zip(
                    self.patterns, self.true_probs, self.frequencies, self.exact_frequencies, self.counts,
                    self.exact_counts,
                )
            ],
        }  # fmt: skip


@dataclass
class PixelMarginals:
    """Pixel-wise marginals ``p(predicted | ground truth)`` of the flippable classes (Appendix C).

    Attributes:
        names: ``K`` source class names (e.g. ``"sidewalk"``) and ``target_names`` the new ones.
        flip_probs: ``K`` true flip probabilities.
        counts: ``K x 4`` pixel counts ``[flipped, kept, other, total]`` (:func:`pixel_marginal_counts`).
    """

    names: list[str]
    target_names: list[str]
    flip_probs: np.ndarray
    counts: np.ndarray

    def _frac(self, col: int) -> np.ndarray:
        total = self.counts[:, 3].astype(np.float64)
        return np.where(total > 0, self.counts[:, col] / np.maximum(total, 1), np.nan)

    @property
    def p_flipped(self) -> np.ndarray:
        """``K`` fractions predicted as the new class, ``p(c' | c)``; compare with :attr:`flip_probs`."""
        return self._frac(0)

    @property
    def p_kept(self) -> np.ndarray:
        """``K`` fractions predicted as the class itself, ``p(c | c)``; compare with ``1 - flip_probs``."""
        return self._frac(1)

    @property
    def p_other(self) -> np.ndarray:
        """``K`` fractions predicted as any other class (segmentation errors)."""
        return self._frac(2)

    def to_dict(self) -> dict[str, Any]:
        return {
            n: {"target": t, "flip_prob": float(q), "p_flipped": float(f), "p_kept": float(k), "p_other": float(o),
                "num_pixel_samples": int(c[3])}
            for n, t, q, f, k, o, c in zip(
                self.names, self.target_names, self.flip_probs, self.p_flipped, self.p_kept, self.p_other, self.counts
            )
        }  # fmt: skip


class CalibrationAccumulator:
    """Gathers Eq. 7 GED, mode matches and pixel marginals over batches of sampled label maps.

    Args:
        flips: ``(source, target, probability, name)`` per flippable class (default: the paper's five).
        classes: classes whose IoU is averaged (default: the 10 switchable classes).
        ignore_index: ignore label (``None``: no masking).
        source_names: names of the source classes (default: ``"class <id>"``; the paper's names for the default
            flips).
        ged_samples: Eq. 7 GED from the first ``ged_samples`` samples of every image (the paper's S = 16), while
            mode frequencies and pixel marginals use all S (``None``, or S below it: all S for everything; the
            summary's ``ged_num_samples`` says which).

    Example::

        acc = CalibrationAccumulator()
        for batch in ...:
            acc.update(samples, modes, mode_probs, mode_patterns, num_modes)
        acc.mode_calibration().pearson, acc.pixel_marginals().p_flipped, acc.ged().mean()
    """

    def __init__(
        self,
        flips: Sequence[Flip] = FLIPS,
        classes: Sequence[int] = SWITCHABLE_CLASSES,
        ignore_index: int | None = IGNORE_INDEX,
        source_names: Sequence[str] | None = None,
        ged_samples: int | None = None,
    ) -> None:
        if ged_samples is not None and ged_samples < 1:
            raise ValueError(f"ged_samples must be >= 1 or None, got {ged_samples}.")
        self.ged_samples = ged_samples
        self.flips = tuple(tuple(f) for f in flips)
        self.classes = tuple(int(c) for c in classes)
        self.ignore_index = ignore_index
        modes = enumerate_modes([f[2] for f in self.flips])
        self.patterns = [b for b, _ in modes]
        self.pattern_probs = np.array([p for _, p in modes])
        if source_names is None:
            source_names = [TRAIN_ID_NAMES[f[0]] if f[0] < len(TRAIN_ID_NAMES) else f"class {f[0]}" for f in self.flips]
        self.source_names = list(source_names)
        self.reset()

    def reset(self) -> None:
        self._counts = np.zeros_like(self.pattern_probs)
        self._exact = np.zeros_like(self.pattern_probs)
        self._pixels = np.zeros((len(self.flips), 4), dtype=np.int64)
        self._ged: list[torch.Tensor] = []
        self._num_images = self._num_exact = 0
        self._num_samples: int | None = None

    def update(
        self,
        samples: torch.Tensor,
        modes: torch.Tensor,
        mode_probs: torch.Tensor,
        mode_patterns: Sequence[Sequence[Sequence[int]]],
        num_modes: torch.Tensor | Sequence[int] | None = None,
    ) -> GEDTerms:
        """Add one batch; return its per-image Eq. 7 terms (over the first ``ged_samples`` samples).

        Args:
            samples: ``B x S x *spatial`` sampled label maps.
            modes: ``B x M x *spatial`` modes, padded (zero weight) after ``num_modes[b]``.
            mode_probs: ``B x M`` weights (0 on padding).
            mode_patterns: per image, per valid mode, its pattern indices.
            num_modes: ``B`` valid modes per image (default: ``len(mode_patterns[b])``).
        """
        if num_modes is None:
            num_modes = [len(g) for g in mode_patterns]
        if self._num_samples is not None and samples.shape[1] != self._num_samples:
            raise ValueError(f"every batch must have the same S; got {samples.shape[1]} after {self._num_samples}.")
        self._num_samples = int(samples.shape[1])
        samples = samples.long()
        modes = modes.long().to(samples.device)
        if self.ignore_index is not None:
            samples = mask_ignored(samples, modes, self.ignore_index)
        terms = known_mixture_ged(samples[:, : self.ged_samples], modes, mode_probs, self.classes, None)
        matches = match_modes(samples, modes, num_modes, self.classes, None)
        counts, exact = attribute_patterns(matches, mode_patterns, self.pattern_probs)
        self._counts += counts
        self._exact += exact
        self._pixels += pixel_marginal_counts(samples, modes, self.flips, None)
        self._ged.append(torch.stack(list(terms), dim=1).cpu())
        self._num_images += samples.shape[0]
        self._num_exact += sum(all(len(g) == 1 for g in groups) for groups in mode_patterns)
        return terms

    def ged(self) -> np.ndarray:
        """``N x 4`` per-image Eq. 7 terms: ged, d_sy, d_ss, d_yy."""
        if not self._ged:
            raise ValueError("CalibrationAccumulator has no data: call update() first.")
        return torch.cat(self._ged).double().numpy()

    def mode_calibration(self) -> ModeCalibration:
        return ModeCalibration(
            self.patterns, self.pattern_probs.copy(), self._counts.copy(), self._exact.copy(), self._num_images,
            self._num_exact, self._num_samples or 0,
        )

    def pixel_marginals(self) -> PixelMarginals:
        return PixelMarginals(
            self.source_names, [f[3] for f in self.flips], np.array([f[2] for f in self.flips]), self._pixels.copy()
        )

    def summary(self) -> dict[str, Any]:
        """``{"num_images", "num_samples", "classes", "ged": {mean of each term}, "mode_calibration",
        "pixel_marginals"}`` (JSON-ready)."""
        g = self.ged()
        return {
            "estimator": "Eq. 7: squared GED vs the known modes, V-statistic, d = 1 - mean IoU over classes "
            "(absent-from-both excluded), ignore pixels masked",
            "num_images": self._num_images,
            "num_samples": self._num_samples,
            "ged_num_samples": min(self.ged_samples or self._num_samples or 0, self._num_samples or 0),
            "classes": list(self.classes),
            "ged": {k: float(np.mean(g[:, i])) for i, k in enumerate(("ged", "d_sy", "d_ss", "d_yy"))},
            "mode_calibration": self.mode_calibration().to_dict(),
            "pixel_marginals": self.pixel_marginals().to_dict(),
        }
