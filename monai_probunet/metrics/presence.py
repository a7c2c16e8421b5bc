"""Lesion presence from samples and prediction of ground-truth ambiguity (paper Appendix E)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io_utils import read_json

__all__ = [
    "PresenceThreshold",
    "fit_presence_threshold",
    "lesion_presence_counts",
    "load_presence_threshold",
    "presence_ambiguity",
    "presence_probability",
]


def _present(x: torch.Tensor, name: str, set_name: str) -> torch.Tensor:
    """``B x N`` bool: does map n of image b contain any non-zero pixel."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape B x {set_name} x *spatial, got {type(x).__name__}.")
    if x.ndim < 3 or x.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape B x {set_name} x *spatial with {set_name} >= 1, got {tuple(x.shape)}."
        )
    return (x != 0).flatten(2).any(dim=-1)


def lesion_presence_counts(samples: torch.Tensor) -> torch.Tensor:
    """Number of samples that contain a lesion, per image.

    A sample contains a lesion iff any of its pixels is non-zero (binary masks or label maps).

    Args:
        samples: ``B x S x *spatial`` label maps (any dtype; 0 = background).

    Returns:
        ``B`` int64 counts in ``[0, S]``.

    Raises:
        ValueError: If ``samples`` is not ``B x S x *spatial`` with ``S >= 1``.
    """
    return _present(samples, "samples", "S").sum(dim=1)


def presence_probability(samples: torch.Tensor) -> torch.Tensor:
    """Fraction of the S samples that contain a lesion, per image: ``lesion_presence_counts(samples) / S``.

    The model's lesion-presence probability (the clinical output "is there a lesion at all").

    Args:
        samples: ``B x S x *spatial`` label maps (0 = background).

    Returns:
        ``B`` float32 in ``[0, 1]``.

    Raises:
        ValueError: If ``samples`` is not ``B x S x *spatial`` with ``S >= 1``.
    """
    present = _present(samples, "samples", "S")
    return present.float().mean(dim=1)


def presence_ambiguity(graders: torch.Tensor) -> torch.Tensor:
    """Ground-truth ambiguity of lesion presence (paper Appendix E), per image.

    An image is ambiguous iff the graders disagree on presence: at least one grader drew a lesion (a non-zero
    pixel) and at least one grader drew none. With a single grader nothing is ambiguous.

    Args:
        graders: ``B x A x *spatial`` grader masks (0 = background).

    Returns:
        ``B`` bool, True where the graders disagree on presence.

    Raises:
        ValueError: If ``graders`` is not ``B x A x *spatial`` with ``A >= 1``.
    """
    present = _present(graders, "graders", "A")
    return present.any(dim=1) & ~present.all(dim=1)


def _as_int_counts(counts: Any, num_samples: int, name: str = "counts") -> np.ndarray:
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    arr = np.asarray(counts)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (one count per image), got shape {arr.shape}.")
    if arr.size and (arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.any(arr != np.round(arr))):
        raise ValueError(f"{name} must hold integer sample counts, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > num_samples):
        raise ValueError(
            f"{name} must lie in [0, num_samples={num_samples}], got values in [{arr.min()}, {arr.max()}]."
        )
    return arr


def _as_bool_labels(labels: Any, n: int, name: str = "ambiguous") -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a 1-D bool array with one label per count ({n}), got shape {arr.shape}.")
    if arr.dtype != bool and not (np.issubdtype(arr.dtype, np.number) and np.isin(arr, (0, 1)).all()):
        raise ValueError(f"{name} must be bool (or 0/1) labels, got dtype {arr.dtype}.")
    return arr.astype(bool)


def _check_num_samples(num_samples: Any) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1 (samples drawn per image), got {num_samples!r}.")
    return int(num_samples)


@dataclass(frozen=True)
class PresenceThreshold:
    """Interval rule on lesion-presence counts: predicted ambiguous iff ``low < count < high``.

    Attributes:
        low, high: Exclusive bounds, ``0 <= low < high <= num_samples`` (``high = low + 1`` predicts nothing ambiguous).
        accuracy: Accuracy on the set it was fitted on (validation).
        num_samples: S, the number of samples per image the counts were taken from; counts from a different S are not
            comparable, so :meth:`predict` only checks them against ``[0, num_samples]``.
    """

    low: int
    high: int
    accuracy: float
    num_samples: int

    def __post_init__(self) -> None:
        _check_num_samples(self.num_samples)
        if not (0 <= self.low < self.high <= self.num_samples):
            raise ValueError(
                f"expected 0 <= low < high <= num_samples, got low={self.low}, high={self.high}, "
                f"num_samples={self.num_samples}."
            )

    def predict(self, counts: np.ndarray | torch.Tensor | Any) -> np.ndarray:
        """Predicted ambiguity for ``N`` lesion-presence counts: ``low < count < high``.

        Args:
            counts: ``N`` integer counts in ``[0, num_samples]`` (from :func:`lesion_presence_counts`).

        Returns:
            ``N`` bool.
        """
        c = _as_int_counts(counts, self.num_samples)
        return (self.low < c) & (c < self.high)

    def score(self, counts: np.ndarray | torch.Tensor | Any, ambiguous: np.ndarray | torch.Tensor | Any) -> float:
        """Accuracy of :meth:`predict` against ground-truth labels.

        (Named ``score`` because ``accuracy`` is the field holding the accuracy on the fitting set.)

        Args:
            counts: ``N`` integer counts in ``[0, num_samples]``.
            ambiguous: ``N`` bool ground-truth ambiguity labels (from :func:`presence_ambiguity`).

        Returns:
            Fraction of images whose predicted ambiguity equals ``ambiguous``, in ``[0, 1]``.
        """
        pred = self.predict(counts)
        if pred.size == 0:
            raise ValueError("counts must hold at least one image to compute an accuracy.")
        return float((pred == _as_bool_labels(ambiguous, pred.size)).mean())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``json.dump(t.to_dict(), f)``), with the rule spelled out."""
        return {**asdict(self), "rule": "ambiguous iff low < count < high"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PresenceThreshold:
        """Inverse of :meth:`to_dict` (extra keys such as ``rule`` are ignored)."""
        missing = [k for k in ("low", "high", "accuracy", "num_samples") if k not in data]
        if missing:
            raise ValueError(f"data is missing the PresenceThreshold field(s) {missing}.")
        return cls(
            low=int(data["low"]),
            high=int(data["high"]),
            accuracy=float(data["accuracy"]),
            num_samples=int(data["num_samples"]),
        )


def fit_presence_threshold(
    counts: np.ndarray | torch.Tensor | Any,
    ambiguous: np.ndarray | torch.Tensor | Any,
    num_samples: int,
) -> PresenceThreshold:
    """Fit the interval rule ``low < count < high`` that best predicts ground-truth ambiguity (Appendix E).

    Every pair ``0 <= low < high <= num_samples`` is scored at once (a ``pairs x N`` boolean matrix) and the
    one with the most correct predictions on this (validation) set is kept. Ties are broken toward the pair
    closest to ``(0, num_samples)`` in Euclidean distance, i.e. minimising ``low**2 + (num_samples - high)**2``
    (favouring wide, balanced intervals; not the same as "widest": (2, S-2) beats (0, S-3)), then toward the
    smaller ``low``. The fit is deterministic: the result depends only on the multiset of ``(count, label)`` pairs
    (same input in any order, same ``(low, high)``; no randomness, no dependence on floating-point sums). The
    paper speaks of "the best
    threshold"; the interval rule contains both one-sided rules (``high = num_samples`` or ``low = 0``),
    except that a count of 0 or of ``num_samples`` (all samples agree) is never predicted ambiguous.

    Args:
        counts: ``N`` lesion-presence counts in ``[0, num_samples]`` (:func:`lesion_presence_counts`).
        ambiguous: ``N`` bool ground-truth labels (:func:`presence_ambiguity` of the grader masks).
        num_samples: S, the number of samples each count was taken from (16 in the paper).

    Returns:
        The fitted ``(low, high)``, its accuracy on this set, and ``num_samples``.

    Raises:
        ValueError: If ``counts`` is empty, not integer, or outside ``[0, num_samples]``; if ``ambiguous`` does not hold
            one bool label per count; if ``num_samples < 1``.
    """
    s = _check_num_samples(num_samples)
    c = _as_int_counts(counts, s)
    if c.size == 0:
        raise ValueError("counts must hold at least one image to fit a threshold.")
    y = _as_bool_labels(ambiguous, c.size)
    low, high = np.triu_indices(s + 1, k=1)  # all pairs 0 <= low < high <= S
    pred = (low[:, None] < c[None, :]) & (c[None, :] < high[:, None])  # pairs x N
    correct = (pred == y[None, :]).sum(axis=1)
    # lexicographic: most correct, then closest to (0, S), then smaller low
    order = np.lexsort((low, low**2 + (s - high) ** 2, -correct))
    best = int(order[0])
    return PresenceThreshold(
        low=int(low[best]), high=int(high[best]), accuracy=float(correct[best]) / c.size, num_samples=s
    )


def load_presence_threshold(path: str | Path) -> PresenceThreshold:
    """Read a ``presence_threshold.json`` (written by :func:`monai_probunet.evaluation.save_presence_threshold`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, not a JSON object, or not a valid :class:`PresenceThreshold`; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"presence threshold file {path} does not exist (written by the evaluation run).")
    data = read_json(path, "presence threshold file")
    if not isinstance(data, dict):
        raise ValueError(
            f"presence threshold file {path} holds a JSON {type(data).__name__}, expected an object with low, high, "
            "accuracy, num_samples."
        )
    try:
        return PresenceThreshold.from_dict(data)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from e
