"""The oracle sampler: draws from the true ground-truth distribution, scored with the same metric as models."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ORACLE", "sample_modes"]

#: the name of the oracle sampler in every evaluation output (and the string that selects it)
ORACLE = "oracle"


def sample_modes(
    modes: torch.Tensor, probs: Sequence[float] | torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``num_samples`` label maps i.i.d. from a discrete distribution over ``modes``.

    Args:
        modes: ``M x *spatial`` label maps (the outline variants of one image).
        probs: ``M`` probabilities summing to 1.
        num_samples: S.
        generator: optional random generator (same state, same draws).

    Returns:
        ``S x *spatial`` label maps.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 1 or p.numel() != modes.shape[0] or (p < 0).any() or abs(float(p.sum()) - 1.0) > 1e-6:
        raise ValueError(f"probs must be {modes.shape[0]} non-negative values summing to 1, got {p.tolist()}.")
    idx = torch.multinomial(p, num_samples, replacement=True, generator=generator)
    return modes[idx]
