"""Weight initialisation of Appendix H: orthogonal weights (gain 1), biases from a truncated normal."""

from __future__ import annotations

import torch.nn as nn

__all__ = ["init_weights_orthogonal"]


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
