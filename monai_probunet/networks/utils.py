"""Small helpers on hypothesis tensors."""

from __future__ import annotations

import torch

__all__ = ["hypotheses_to_labels"]


def hypotheses_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """Arg-max label maps of sampled logits.

    Args:
        logits: ``B x S x C x *spatial``.

    Returns:
        ``B x S x *spatial`` integer (int64) labels.
    """
    if logits.ndim < 4:
        raise ValueError(f"expected B x S x C x *spatial logits, got shape {tuple(logits.shape)}.")
    return logits.argmax(dim=2)
