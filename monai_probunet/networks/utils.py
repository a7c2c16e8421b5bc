"""Small helpers on hypothesis tensors and networks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["hypotheses_to_labels", "is_channels_last"]


def is_channels_last(network: nn.Module) -> bool:
    """Whether ``network``'s 2-D convolution weights are in the channels-last memory format (after
    ``network.to(memory_format=torch.channels_last)``), read from the first one whose two formats differ (a weight
    with one input channel or a 1x1 kernel is contiguous in both); ``False`` for a network without one."""
    weights = (p for p in network.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1)
    weight = next(weights, None)
    return weight is not None and not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


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
