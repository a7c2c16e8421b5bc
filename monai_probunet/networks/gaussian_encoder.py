"""Prior and posterior nets: the U-Net encoder, global average pooling, 1x1 conv to an axis-aligned Gaussian."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from torch.distributions import Independent, Normal

from .unet_core import DEFAULT_NORM, UNetEncoder

__all__ = ["AxisAlignedGaussianEncoder", "LOG_SIGMA_BOUND"]

#: |log sigma| is softly bounded by this value (sigma in [4.5e-5, 2.2e4]) so ``exp`` can never overflow to inf
#: or collapse to 0, while gradients stay non-zero (a tanh soft-clamp instead of a hard clamp).
LOG_SIGMA_BOUND = 10.0


class AxisAlignedGaussianEncoder(nn.Module):
    """Maps an input to ``N(mu, diag(sigma^2))`` over an ``latent_dim``-dimensional latent space.

    Used as the prior net (input: image) and the posterior net (input: image concatenated with the centred
    one-hot segmentation, see :meth:`ProbUNet.posterior_input`).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        channels: channels per scale of the encoder (the U-Net encoder's architecture).
        latent_dim: dimension N of the latent space.
        num_convs: 3x3 convolutions per block.
        norm: normalisation after each 3x3 convolution (default instance norm; ``None``: the paper's, see
            :class:`~monai_probunet.networks.unet_core.ConvBlock`).
        presence_channels: the last ``presence_channels`` input channels also reach the 1x1 head through a spatial
            max, beside the pooled encoder features (0: the paper's encoder). For a centred one-hot segmentation
            this tells the head which classes are present at all: a class on a few pixels is as visible as a large
            one, whereas the global average over the encoder's normalised features can dilute it by its area.

    Shapes:
        ``forward``: ``B x in_channels x *spatial`` -> ``Independent(Normal)`` with batch shape ``B`` and event
        shape ``latent_dim``; :meth:`moments` returns the ``B x latent_dim`` mean and log sigma.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        latent_dim: int,
        num_convs: int = 3,
        norm: str | tuple | None = DEFAULT_NORM,
        presence_channels: int = 0,
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}.")
        if not 0 <= presence_channels <= in_channels:
            raise ValueError(f"presence_channels must be in [0, in_channels={in_channels}], got {presence_channels}.")
        self.latent_dim = latent_dim
        self.presence_channels = presence_channels
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, num_convs, norm=norm)
        self.head = Conv[Conv.CONV, spatial_dims](channels[-1] + presence_channels, 2 * latent_dim, kernel_size=1)

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, log_sigma)``, each ``B x latent_dim``, computed in float32."""
        h = self.encoder(x)[-1]
        h = h.mean(dim=tuple(range(2, h.ndim)), keepdim=True)
        if self.presence_channels:
            present = x[:, x.shape[1] - self.presence_channels :].amax(dim=tuple(range(2, x.ndim)), keepdim=True)
            h = torch.cat([h, present.to(h.dtype)], dim=1)
        out = self.head(h).flatten(1).float()
        mu, raw_log_sigma = out[:, : self.latent_dim], out[:, self.latent_dim :]
        log_sigma = LOG_SIGMA_BOUND * torch.tanh(raw_log_sigma / LOG_SIGMA_BOUND)
        return mu, log_sigma

    def forward(self, x: torch.Tensor) -> Independent:
        mu, log_sigma = self.moments(x)
        return Independent(Normal(loc=mu, scale=torch.exp(log_sigma)), 1)
