"""M-Heads baseline (paper Sec. 3.2, Fig. 2c): the shared U-Net core with M 1x1 logits heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv

from .init import init_output_prior, init_weights_orthogonal
from .unet_core import DEFAULT_NORM, UNetCore, check_image_channels

__all__ = ["MHeadsUNet"]


class MHeadsUNet(nn.Module):
    """U-Net core + M 1x1 convolution heads, each predicting one segmentation variant.

    Paper Sec. 3.2: "the works of [12] and [13] propose to branch off M heads after the last layer of a deep net
    each of which contributes one output variant." Train with :class:`monai_probunet.losses.MHeadsLoss` (the best
    head weighted ``1 - eps``, the others ``eps / (M - 1)``). The paper trains one model per sample count
    (M = 4, 8, 16).

    ``forward(image, seg=None)`` accepts (and ignores) the segmentation so it trains with the same engine as
    :class:`ProbUNet`. :meth:`sample` returns the heads' predictions: with ``num_samples == M`` every head once, in
    head order; otherwise head ``s mod M`` for ``s = 0 .. S-1`` (the first S heads if ``S < M``, heads repeated
    cyclically if ``S > M``).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: image channels.
        out_channels: number of classes C.
        channels: U-Net channels per scale, finest first.
        num_heads: M, the number of heads (= hypotheses).
        num_convs: 3x3 convolutions per block.
        norm: normalisation after each 3x3 convolution (default instance norm; ``None``: the paper's, see
            :class:`~monai_probunet.networks.unet_core.ConvBlock`).
        foreground_prior: start every pixel at this foreground probability (the logits layer's bias, see
            :func:`~monai_probunet.networks.init.init_output_prior`); ``None``: the paper's initialisation, 50 %.

    Shapes:
        ``forward``: ``B x in_channels x *spatial`` -> ``B x M x C x *spatial`` logits;
        ``sample`` -> ``B x S x C x *spatial``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        num_heads: int = 16,
        num_convs: int = 3,
        norm: str | tuple | None = DEFAULT_NORM,
        foreground_prior: float | None = None,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}.")
        if out_channels < 2:
            raise ValueError(f"out_channels must be >= 2 (softmax over classes), got {out_channels}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_heads = num_heads
        self.unet = UNetCore(spatial_dims, in_channels, channels, num_convs, norm=norm)
        conv = Conv[Conv.CONV, spatial_dims]
        self.heads = nn.ModuleList(conv(self.unet.out_channels, out_channels, kernel_size=1) for _ in range(num_heads))
        init_weights_orthogonal(self)  # every head gets its own orthogonal C x F matrix
        if foreground_prior is not None:
            for head in self.heads:
                init_output_prior(head, foreground_prior)

    def forward(self, image: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of all heads, ``B x M x C x *spatial``; the U-Net runs once, the M heads as one matrix product."""
        check_image_channels(image, self.in_channels, self.spatial_dims)
        features = self.unet(image)
        weight = torch.cat([h.weight.flatten(1) for h in self.heads])  # (M * C) x F
        bias = torch.cat([h.bias for h in self.heads])
        logits = F.linear(features.movedim(1, -1), weight.to(features.dtype), bias.to(features.dtype))
        b, spatial = features.shape[0], features.shape[2:]
        return logits.movedim(-1, 1).reshape(b, self.num_heads, self.out_channels, *spatial)

    def sample(
        self, image: torch.Tensor, num_samples: int = 16, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``B x S x C x *spatial`` logits: head ``s mod M`` for sample ``s`` (all heads once if ``S == M``).

        ``generator`` is accepted for the common sampling protocol and unused (the heads are deterministic).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        logits = self.forward(image)
        if num_samples == self.num_heads:
            return logits
        index = torch.arange(num_samples, device=logits.device) % self.num_heads
        return logits.index_select(1, index)
