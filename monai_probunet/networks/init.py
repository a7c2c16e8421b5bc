"""Weight initialisation of Appendix H: orthogonal weights (gain 1), biases from a truncated normal."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["init_output_prior", "init_weights_orthogonal"]


def init_weights_orthogonal(module: nn.Module, gain: float = 1.0, bias_std: float = 1e-3) -> None:
    """Initialise every convolution and linear layer of ``module`` in place.

    Weights are orthogonal with ``gain`` (conv kernels are flattened to ``out x (in * k...)``), biases are drawn
    from a normal truncated at two standard deviations with std ``bias_std`` (the paper's sigma = 0.001).

    Args:
        module: the module whose sub-modules are initialised.
        gain: multiplicative factor of the orthogonal initialisation.
        bias_std: standard deviation of the truncated-normal bias initialisation.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.orthogonal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.trunc_normal_(m.bias, mean=0.0, std=bias_std, a=-2 * bias_std, b=2 * bias_std)


def init_output_prior(layer: nn.Module, foreground_prob: float) -> None:
    """Set the bias of a logits layer so that every pixel starts at ``foreground_prob`` for the foreground.

    The prior-probability initialisation of Lin et al. (2017, "Focal loss for dense object detection"): with a
    foreground of a few pixels in thousands, a network that starts at 50 % per pixel first spends its updates on
    learning that almost everything is background. Started at the background rate, its first updates go to the
    features. The background (class 0) gets ``1 - foreground_prob``, the other classes share ``foreground_prob``;
    the weights are left as they are.

    Args:
        layer: a convolution or linear layer with a bias of ``C >= 2`` entries (its output channels are classes).
        foreground_prob: the probability, in ``(0, 1)``, of all non-background classes together.
    """
    if not 0.0 < foreground_prob < 1.0:
        raise ValueError(f"foreground_prob must be in (0, 1), got {foreground_prob}.")
    bias = getattr(layer, "bias", None)
    if bias is None or bias.numel() < 2:
        raise ValueError(f"the logits layer needs a bias of >= 2 classes, got {type(layer).__name__}.")
    c = bias.numel()
    probs = torch.full((c,), foreground_prob / (c - 1), dtype=bias.dtype)
    probs[0] = 1.0 - foreground_prob
    with torch.no_grad():
        bias.copy_(probs.log() - probs[0].log())
