"""f_comb: the latent broadcast to the image grid, concatenated to the U-Net features, three 1x1 convolutions."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

__all__ = ["FComb"]

# hidden activations per pixel tile on the CPU (elements): ~4 MB in float32
_TILE_ELEMENTS = 1 << 20
# the fewest pixels per tile, and the most elements of one tile's hidden activations (16 MB in float32): larger
# tensors lie beyond glibc's mmap threshold (at most 32 MB), so each is mapped anew and page-faulted in
_MIN_TILE = 64
_MAX_TILE_ELEMENTS = 1 << 22


def pixel_tile(device: torch.device, batch: int, num_samples: int, hidden: int, pixels: int) -> int:
    """Pixels per tile of f_comb's hidden activations (``batch x num_samples x tile x hidden``).

    On the CPU a tile of a few MB stays in cache (measured 5x faster than one pass over all pixels); on a GPU every
    tile is more kernel launches for no gain (one pass measured 1.5x faster per training step), so it is all pixels.
    """
    if device.type != "cpu":
        return pixels
    return max(_MIN_TILE, _TILE_ELEMENTS // max(1, batch * num_samples * hidden))


def images_per_tile(device: torch.device, batch: int, num_samples: int, hidden: int, tile: int) -> int:
    """Images per tile: all, unless their ``num_samples x tile x hidden`` activations exceed 2^22 elements on the CPU.

    A validation batch of 32 images x 16 hypotheses at 128 hidden channels in one tile of 256 pixels is 67 MB of
    activations: its sampling takes 1.8x (fp32) to 1.9x (bf16) the time it takes in tiles of 16 MB
    (``benchmarks/default_epoch.py``).
    """
    if device.type != "cpu":
        return batch
    return max(1, min(batch, _MAX_TILE_ELEMENTS // max(1, num_samples * tile * hidden)))


class FComb(nn.Module):
    """Combines U-Net features with S latent samples into S logit maps (paper Eq. 2).

    Mathematically ``conv1x1(relu(conv1x1(relu(conv1x1(concat(features, tile(z)))))))``. The first convolution is
    evaluated as ``W_f * features + W_z z + b``: the feature part once per image, the latent part once per sample
    (a per-channel offset), so S samples cost S times the two small 1x1 convolutions only, batched over all S.

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
        w = self.first.weight.flatten(1)  # hidden x (F + N)
        w_feat, w_z = w[:, : self.feature_channels], w[:, self.feature_channels :]
        # Every 1x1 convolution is evaluated as a matrix product on a channels-last view (B x P x C), and the
        # S x P hidden activations are produced in tiles of pixels and images (of a few MB on the CPU, one on a
        # GPU): one batched pass over all S latents per tile.
        feats = features.flatten(2).transpose(1, 2)  # B x P x F
        h_feat = F.linear(feats, w_feat.to(feats.dtype))  # B x P x hidden, once per image
        h_z = F.linear(z.to(h_feat.dtype), w_z.to(h_feat.dtype), self.first.bias.to(h_feat.dtype))  # B x S x hidden
        h_z = h_z.unsqueeze(2)  # B x S x 1 x hidden
        hidden = h_feat.shape[-1]
        tile = pixel_tile(features.device, b, s, hidden, feats.shape[1])
        images = images_per_tile(features.device, b, s, hidden, tile)
        rows = []
        # split, not slicing: the backward of a split is one concatenation, that of each slice a zero-filled
        # tensor of the full size
        for h_f, h_s in zip(h_feat.split(images), h_z.split(images)):
            outputs = []
            for part in h_f.split(tile, dim=1):
                h = torch.relu_(part.unsqueeze(1) + h_s)  # images x S x tile x hidden
                for layer in self.rest:
                    if isinstance(layer, nn.ReLU):
                        h = torch.relu_(h)
                    else:
                        h = F.linear(h, layer.weight.flatten(1).to(h.dtype), layer.bias.to(h.dtype))
                outputs.append(h)
            rows.append(outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2))
        out = rows[0] if len(rows) == 1 else torch.cat(rows)  # B x S x P x C
        return out.transpose(2, 3).reshape(b, s, -1, *spatial)  # B x S x C x *spatial
