"""Deterministic U-Net: the shared core with a 1x1 logits head (the paper's 1-member ensemble)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv

from .init import init_output_prior, init_weights_orthogonal
from .unet_core import DEFAULT_NORM, UNetCore, check_image_channels

__all__ = ["DeterministicUNet"]


class DeterministicUNet(nn.Module):
    """U-Net core + 1x1 convolution to class logits.

    ``forward(image, seg=None)`` accepts (and ignores) the segmentation so it trains with the same engine as
    :class:`ProbUNet`; ``sample`` repeats the single prediction S times (or, with ``dropout > 0``, keeps dropout
    active and draws S stochastic passes: the Dropout U-Net baseline).

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: image channels.
        out_channels: number of classes C.
        channels: U-Net channels per scale, finest first.
        num_convs: 3x3 convolutions per block.
        dropout: input dropout of the three innermost encoder and decoder blocks.
        norm: normalisation after each 3x3 convolution (default instance norm; ``None``: the paper's, see
            :class:`~monai_probunet.networks.unet_core.ConvBlock`).
        foreground_prior: start every pixel at this foreground probability (the logits layer's bias, see
            :func:`~monai_probunet.networks.init.init_output_prior`); ``None``: the paper's initialisation, 50 %.

    Shapes:
        ``forward``: ``B x in_channels x *spatial`` -> ``B x C x *spatial``;
        ``sample`` -> ``B x S x C x *spatial``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        num_convs: int = 3,
        dropout: float = 0.0,
        norm: str | tuple | None = DEFAULT_NORM,
        foreground_prior: float | None = None,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dropout = dropout
        self.unet = UNetCore(spatial_dims, in_channels, channels, num_convs, dropout=dropout, norm=norm)
        self.head = Conv[Conv.CONV, spatial_dims](self.unet.out_channels, out_channels, kernel_size=1)
        init_weights_orthogonal(self)
        if foreground_prior is not None:
            init_output_prior(self.head, foreground_prior)

    def forward(self, image: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        check_image_channels(image, self.in_channels, self.spatial_dims)
        return self.head(self.unet(image))

    def sample(
        self, image: torch.Tensor, num_samples: int = 16, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``B x S x C x *spatial`` logits: S copies of the prediction, or S dropout passes if ``dropout > 0``.

        With a ``generator``, the dropout masks are drawn under a seed taken from it (the global RNG state is
        restored afterwards), so the same generator state gives the same samples.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        if self.dropout == 0:
            logits = self.forward(image)
            return logits.unsqueeze(1).expand(-1, num_samples, *logits.shape[1:])
        was_training = self.training
        self.train()  # dropout stays on when sampling (Bayesian SegNet)
        batched = image.repeat_interleave(num_samples, dim=0)
        devices = [image.device] if image.device.type == "cuda" else []
        try:
            if generator is None:
                logits = self.forward(batched)
            else:
                seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
                with torch.random.fork_rng(devices=devices, device_type=image.device.type):
                    torch.manual_seed(seed)
                    logits = self.forward(batched)
        finally:
            self.train(was_training)
        return logits.reshape(image.shape[0], num_samples, *logits.shape[1:])
