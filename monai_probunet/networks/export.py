"""A deterministic ``forward(image)`` for exporting a Probabilistic U-Net to TorchScript.

``ProbUNet.forward`` needs a segmentation (training) and ``ProbUNet.sample`` draws random noise, so neither can be
exported as a plain ``image -> tensor`` network. :class:`ProbUNetSampler` fixes the latent noise at construction
(a buffer drawn from a seeded generator) and returns all S hypotheses stacked in the channel dimension, which is what
``python -m monai.bundle ckpt_export`` / ``verify_net_in_out`` expect (metadata keys ``image`` -> ``pred``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from .latent_noise import prior_noise
from .prob_unet import ProbUNet

__all__ = ["ProbUNetSampler", "unstack_hypotheses"]

_PREFIX = "network."


class ProbUNetSampler(nn.Module):
    """``forward(image) -> logits of S fixed-noise hypotheses``, stacked in channels (exportable).

    The latent noise ``eps`` (``1 x S x N``) is drawn once, at construction, by
    :func:`~monai_probunet.networks.latent_noise.prior_noise` from ``torch.Generator().manual_seed(seed)`` with the
    network's ``prior_sampling``: exactly what
    ``network.sample(image, S, generator=torch.Generator().manual_seed(seed))`` draws for a batch of one image, so
    for ``B = 1`` the output equals ``network.sample(...).flatten(1, 2)``. Within a batch every image gets the same
    noise (``sample`` would draw fresh noise per image). The latents are ``z = mu + L eps`` with the prior
    ``N(mu, L L^T)`` of each image (``L = diag(sigma)`` for the paper's axis-aligned prior).

    The wrapper's state dict is the wrapped network's (``eps`` is a non-persistent buffer), and
    :meth:`load_state_dict` accepts the network's own keys (``model.pt`` as training writes it), so
    ``ckpt_export`` can load ``bundle/models/model.pt`` into it directly.

    Args:
        network: a :class:`~monai_probunet.networks.ProbUNet` (any ablation).
        num_samples: S, hypotheses per image.
        seed: seed of the latent noise.

    Shapes:
        image ``B x in_channels x *spatial`` -> ``B x (S * C) x *spatial`` float logits; channel ``s * C + c`` is
        class ``c`` of hypothesis ``s`` (:func:`unstack_hypotheses` gives ``B x S x C x *spatial`` back).
    """

    def __init__(self, network: ProbUNet, num_samples: int = 16, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(network, ProbUNet):
            raise TypeError(f"network must be a ProbUNet, got {type(network).__name__}.")
        if isinstance(num_samples, bool) or int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}.")
        self.network = network
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.out_channels = network.out_channels
        generator = torch.Generator().manual_seed(self.seed)
        eps = prior_noise(1, self.num_samples, network.latent_dim, generator, method=network.prior_sampling)
        self.register_buffer("eps", eps, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        z = self.network.prior_latents(image, self.eps)
        logits = self.network.decode(image, z)  # B x S x C x *spatial
        return logits.flatten(1, 2)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load the wrapper's state dict, or the wrapped network's own (keys without the ``network.`` prefix)."""
        if state_dict and not any(str(k).startswith(_PREFIX) for k in state_dict):
            return self.network.load_state_dict(state_dict, strict=strict, assign=assign)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def unstack_hypotheses(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``B x (S * C) x *spatial`` (exported ``pred``) -> ``B x S x C x *spatial``."""
    if pred.ndim < 3 or pred.shape[1] % num_classes:
        raise ValueError(f"expected B x (S * {num_classes}) x *spatial, got {tuple(pred.shape)}.")
    return pred.reshape(pred.shape[0], pred.shape[1] // num_classes, num_classes, *pred.shape[2:])
