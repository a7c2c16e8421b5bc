"""Per-image statistics for comparing models: percentile bootstrap intervals and the Wilcoxon signed-rank test."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["bootstrap_ci", "wilcoxon_signed_rank"]

# Elements of the resample-index matrix gathered at once (bounds the float64 temporary to ~32 MB).
_GATHER_ELEMENTS = 1 << 22


def _as_1d(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D sequence of numbers (one value per image): {err}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (one value per image), got shape {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it holds {int((~np.isfinite(arr)).sum())} NaN/inf value(s).")
    return arr


def bootstrap_ci(
    values: np.ndarray | torch.Tensor | Any,
    num_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean of per-image values and its percentile bootstrap confidence interval.

    Draws ``num_resamples`` resamples of the N images with replacement (one ``num_resamples x N`` index matrix
    from ``numpy.random.default_rng(seed)``), takes the mean of each, and returns the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of these means (``numpy.quantile``, linear
    interpolation). Resampling is over images, so the interval reflects image-to-image variation only.

    Args:
        values: ``N`` per-image values (e.g. per-image GED), finite.
        num_resamples: Number of bootstrap resamples, ``>= 1``.
        confidence: Coverage of the interval, in ``(0, 1)``.
        seed: Seed of the generator; the same seed and values give the same interval.

    Returns:
        ``(mean, low, high)``: the sample mean of ``values`` and the interval bounds.

    Raises:
        ValueError: If ``values`` is not a non-empty finite 1-D array, ``num_resamples < 1`` or ``confidence`` not in
            (0, 1).
    """
    arr = _as_1d(values, "values")
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) or num_resamples < 1:
        raise ValueError(f"num_resamples must be an integer >= 1, got {num_resamples!r}.")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in the open interval (0, 1), got {confidence!r}.")
    n = arr.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(int(num_resamples), n))  # the single resample matrix
    rows = max(1, _GATHER_ELEMENTS // n)
    means = np.concatenate([arr[idx[i : i + rows]].mean(axis=1) for i in range(0, idx.shape[0], rows)])
    alpha = (1.0 - float(confidence)) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(arr.mean()), float(low), float(high)


def wilcoxon_signed_rank(
    a: np.ndarray | torch.Tensor | Any, b: np.ndarray | torch.Tensor | Any
) -> dict[str, float | int | str | None]:
    """Two-sided Wilcoxon signed-rank test on paired per-image values (``scipy.stats.wilcoxon(a, b)``).

    The differences ``a - b`` are tested for symmetry about 0 (scipy defaults: ``zero_method="wilcox"`` drops
    zero differences, ``method="auto"``). If every difference is zero the test is undefined (scipy raises);
    this function returns ``statistic = 0.0`` and ``p_value = 1.0`` with an explanatory ``note`` instead.

    Args:
        a, b: ``N`` paired per-image values (same images, same order), finite.

    Returns:
        ``statistic`` (float, scipy's two-sided statistic ``min(W+, W-)``), ``p_value`` (float), ``n`` (int,
        number of pairs), ``n_nonzero`` (int, pairs with a non-zero difference, the ones ranked),
        ``median_difference`` (float, median of ``a - b`` over all pairs), ``note`` (str, or ``None``).

    Raises:
        ValueError: If ``a`` or ``b`` is not a non-empty finite 1-D array, or their lengths differ.
    """
    x, y = _as_1d(a, "a"), _as_1d(b, "b")
    if x.shape != y.shape:
        raise ValueError(f"a and b must be paired (same length), got {x.size} and {y.size} values.")
    diff = x - y
    n_nonzero = int(np.count_nonzero(diff))
    result: dict[str, float | int | str | None] = {
        "n": int(x.size),
        "n_nonzero": n_nonzero,
        "median_difference": float(np.median(diff)),
        "note": None,
    }
    if n_nonzero == 0:
        result.update(
            statistic=0.0,
            p_value=1.0,
            note="all paired differences are zero: the test is undefined; p_value set to 1.0 "
            "(no evidence of a difference).",
        )
        return result
    from scipy import stats  # imported here: scipy is slow to import

    res = stats.wilcoxon(x, y)
    result.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    return result
