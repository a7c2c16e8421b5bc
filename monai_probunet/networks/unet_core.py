"""The U-Net core shared by the Probabilistic U-Net and every baseline (paper Appendix H.1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution

from .instance_norm import PlainInstanceNorm, plain_instance_norm_eps

__all__ = [
    "DEFAULT_NORM",
    "ConvBlock",
    "UNetEncoder",
    "UNetDecoder",
    "UNetCore",
    "resample_by_interpolation",
    "check_image_channels",
]

_INTERP_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}

#: normalisation after every 3x3 convolution unless told otherwise (``None``: none, as in the paper)
DEFAULT_NORM = "instance"


def resample_by_interpolation(x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
    """Bi-/tri-linear resampling of a ``B x C x *spatial`` tensor.

    With ``size=None`` it halves every spatial size (the paper's down-sampling); otherwise it resizes to ``size``
    (the paper's up-sampling to the skip connection's size).
    """
    if size is None:
        # linear interpolation at scale 0.5 (align_corners=False) samples every output at the centre of a 2x2(x2)
        # block, with equal weights: exactly average pooling over that block (odd sizes included), which is cheaper
        return _AVG_POOL[x.ndim - 2](x, 2)
    return F.interpolate(x, size=tuple(size), mode=_INTERP_MODE[x.ndim - 2], align_corners=False)


def check_image_channels(image: torch.Tensor, in_channels: int, spatial_dims: int) -> None:
    """Raise a clear ``ValueError`` unless ``image`` is ``B x in_channels x *spatial`` with ``spatial_dims`` axes."""
    if image.ndim != spatial_dims + 2 or image.shape[1] != in_channels:
        raise ValueError(
            f"the network expects images of shape B x {in_channels} x {' x '.join('S' * spatial_dims)} "
            f"(in_channels={in_channels}), got a tensor of shape {tuple(image.shape)}: check in_channels against "
            f"the data (e.g. a channel-first transform, or the number of image modalities)."
        )


class ConvBlock(nn.Sequential):
    """``num_convs`` x (3x3 convolution + normalisation + ReLU), with optional dropout on the block's input.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        out_channels: output channels of every convolution.
        num_convs: number of convolutions (the paper uses 3).
        input_dropout: dropout probability applied to the block's input (0 disables it).
        norm: normalisation after each convolution, a MONAI ``Norm`` name (:data:`DEFAULT_NORM`: instance
            normalisation without affine parameters, MONAI ``Convolution``'s default, which every model of this
            package was trained with; it is computed by an equivalent parameter-free ``GroupNorm`` with one group
            per channel, which is faster); ``None`` (or ``"none"``) for the paper's plain convolution + ReLU
            (Appendix H.1).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        num_convs: int = 3,
        input_dropout: float = 0.0,
        norm: str | tuple | None = DEFAULT_NORM,
    ) -> None:
        if isinstance(norm, str) and norm.lower() == "none":
            norm = None  # `--norm none`: MONAI's bundle CLI drops an override whose value is None
        layers: list[nn.Module] = []
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        for i in range(num_convs):
            conv = Convolution(
                spatial_dims,
                in_channels if i == 0 else out_channels,
                out_channels,
                kernel_size=3,
                act=("relu", {"inplace": True}),
                norm=norm,
            )
            eps = plain_instance_norm_eps(norm)
            if eps is not None:  # the same normalisation through GroupNorm's faster kernels (no parameters either)
                conv.adn.N = PlainInstanceNorm(out_channels, eps=eps)
            layers.append(conv)
        super().__init__(*layers)


def _check_channels(channels: Sequence[int]) -> tuple[int, ...]:
    channels = tuple(int(c) for c in channels)
    if len(channels) < 1 or any(c < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels}.")
    return channels


class UNetEncoder(nn.Module):
    """The U-Net encoder path: one :class:`ConvBlock` per scale, bilinear down-sampling between scales.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: input channels.
        channels: output channels per scale, finest first (the paper doubles a base of 32 per scale).
        num_convs: convolutions per block.
        dropout: input dropout of the ``dropout_blocks`` innermost blocks (the Dropout U-Net baseline).
        dropout_blocks: how many of the innermost blocks get input dropout.
        norm: normalisation after each convolution (see :class:`ConvBlock`).

    Shapes:
        ``forward``: ``B x in_channels x *spatial`` -> list of ``B x channels[i] x *(spatial / 2**i)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        num_convs: int = 3,
        dropout: float = 0.0,
        dropout_blocks: int = 3,
        norm: str | tuple | None = DEFAULT_NORM,
    ) -> None:
        super().__init__()
        channels = _check_channels(channels)
        self.in_channels = in_channels
        self.channels = channels
        n = len(channels)
        self.blocks = nn.ModuleList(
            ConvBlock(
                spatial_dims,
                in_channels if i == 0 else channels[i - 1],
                channels[i],
                num_convs,
                input_dropout=dropout if i >= n - dropout_blocks else 0.0,
                norm=norm,
            )
            for i in range(n)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_image_channels(x, self.in_channels, x.ndim - 2)
        features = []
        for i, block in enumerate(self.blocks):
            if i > 0:
                x = resample_by_interpolation(x)
            x = block(x)
            features.append(x)
        return features


class UNetDecoder(nn.Module):
    """The U-Net decoder path: bilinear up-sampling, concatenation with the skip, one :class:`ConvBlock`.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: the encoder's channels per scale, finest first.
        num_convs: convolutions per block.
        dropout: input dropout of the ``dropout_blocks`` innermost decoder blocks.
        dropout_blocks: how many of the innermost decoder blocks get input dropout.
        norm: normalisation after each convolution (see :class:`ConvBlock`).

    Shapes:
        ``forward``: encoder features (finest first) -> ``B x channels[0] x *spatial`` features (no logits).
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: Sequence[int],
        num_convs: int = 3,
        dropout: float = 0.0,
        dropout_blocks: int = 3,
        norm: str | tuple | None = DEFAULT_NORM,
    ) -> None:
        super().__init__()
        channels = _check_channels(channels)
        n = len(channels)
        # blocks[i] produces scale i from scale i + 1; the innermost block is blocks[n - 2]
        self.blocks = nn.ModuleList(
            ConvBlock(
                spatial_dims,
                channels[i + 1] + channels[i],
                channels[i],
                num_convs,
                input_dropout=dropout if i >= n - 1 - dropout_blocks else 0.0,
                norm=norm,
            )
            for i in range(n - 1)
        )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        for i in range(len(features) - 2, -1, -1):
            skip = features[i]
            x = resample_by_interpolation(x, size=skip.shape[2:])
            x = self.blocks[i](torch.cat([x, skip], dim=1))
        return x


class UNetCore(nn.Module):
    """U-Net of Appendix H.1 that returns the last decoder activation, not logits.

    Args:
        spatial_dims: number of spatial dimensions (2 or 3).
        in_channels: image channels.
        channels: channels per scale, finest first; ``len(channels) - 1`` down-sampling steps.
        num_convs: 3x3 convolutions (+ normalisation + ReLU) per block.
        dropout: input dropout of the innermost ``dropout_blocks`` encoder and decoder blocks.
        dropout_blocks: number of innermost blocks with dropout.
        norm: normalisation after each convolution (see :class:`ConvBlock`).

    Shapes:
        ``forward``: ``B x in_channels x *spatial`` -> ``B x channels[0] x *spatial``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        num_convs: int = 3,
        dropout: float = 0.0,
        dropout_blocks: int = 3,
        norm: str | tuple | None = DEFAULT_NORM,
    ) -> None:
        super().__init__()
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, num_convs, dropout, dropout_blocks, norm)
        self.decoder = UNetDecoder(spatial_dims, channels, num_convs, dropout, dropout_blocks, norm)
        self.out_channels = int(channels[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
