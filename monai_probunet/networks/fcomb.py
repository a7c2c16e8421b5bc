"""f_comb: the latent broadcast to the image grid, concatenated to the U-Net features, three 1x1 convolutions."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

__all__ = ["FComb"]


class FComb(nn.Module):
    """Combines U-Net features with S latent samples into S logit maps (paper Eq. 2).

    Mathematically ``conv1x1(relu(conv1x1(relu(conv1x1(concat(features, tile(z)))))))``. The first convolution is
    evaluated as ``W_f * features + W_z z + b``: the feature part once per image, the latent part once per sample
    (a per-channel offset), so S samples cost S times the two small 1x1 convolutions only, all batched.

    Args:
        spatial_dims: number of spatial dimensions.
        feature_channels: channels of the U-Net's last decoder activation.
        latent_dim: dimension N of the latent space.
        out_channels: number of classes.
        hidden_channels: width of the hidden 1x1 convolutions (default: ``feature_channels``).
        num_convs: number of 1x1 convolutions (the paper uses 3).

    Shapes:
        ``forward``: features ``B x F x *spatial`` and latents ``B x S x N`` -> logits ``B x S x C x *spatial``.
    """

    def __init__(
        self,
        spatial_dims: int,
        feature_channels: int,
        latent_dim: int,
        out_channels: int,
        hidden_channels: int | None = None,
        num_convs: int = 3,
    ) -> None:
        super().__init__()
        if num_convs < 2:
            raise ValueError(f"num_convs must be >= 2, got {num_convs}.")
        hidden = hidden_channels or feature_channels
        conv = Conv[Conv.CONV, spatial_dims]
        self.feature_channels = feature_channels
        self.latent_dim = latent_dim
        self.first = conv(feature_channels + latent_dim, hidden, kernel_size=1)
        layers: list[nn.Module] = []
        for _ in range(num_convs - 2):
            layers += [conv(hidden, hidden, kernel_size=1), nn.ReLU()]
        layers.append(conv(hidden, out_channels, kernel_size=1))
        self.rest = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 3 or z.shape[0] != features.shape[0] or z.shape[2] != self.latent_dim:
            raise ValueError(
                f"z must be B x S x {self.latent_dim} with B = {features.shape[0]}, got {tuple(z.shape)}."
            )
        b, s = z.shape[:2]
        spatial = features.shape[2:]
        w = self.first.weight
        w_feat, w_z = w[:, : self.feature_channels], w[:, self.feature_channels :].flatten(1)
        conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[features.ndim - 2]
        h_feat = conv_fn(features, w_feat)  # B x H x *spatial, once per image
        h_z = F.linear(z.to(h_feat.dtype), w_z.to(h_feat.dtype), self.first.bias.to(h_feat.dtype))  # B x S x H
        h = h_feat.unsqueeze(1) + h_z.reshape(b, s, -1, *([1] * len(spatial)))
        h = torch.relu(h).flatten(0, 1)  # (B*S) x H x *spatial
        if h.ndim == 4 and features.is_contiguous(memory_format=torch.channels_last):
            h = h.contiguous(memory_format=torch.channels_last)
        logits = self.rest(h)
        return logits.reshape(b, s, *logits.shape[1:])
