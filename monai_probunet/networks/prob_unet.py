"""The Probabilistic U-Net (Kohl et al., NeurIPS 2018): U-Net core + prior/posterior nets + f_comb."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Independent, kl_divergence

from .fcomb import FComb
from .gaussian_encoder import AxisAlignedGaussianEncoder
from .init import init_weights_orthogonal
from .unet_core import UNetCore, check_image_channels

__all__ = ["ProbUNet", "segmentation_to_onehot"]


def segmentation_to_onehot(seg: torch.Tensor, num_classes: int, centre: float = 0.5) -> torch.Tensor:
    """One-hot encode a label map and subtract ``centre`` so the posterior input is zero-mean.

    Labels outside ``[0, num_classes)`` (e.g. an ignore label 255) become all-zero before centring.

    Args:
        seg: ``B x 1 x *spatial`` (or ``B x *spatial``) integer labels.
        num_classes: number of classes C.
        centre: value subtracted from the one-hot encoding (the reference implementation uses 0.5).

    Returns:
        ``B x C x *spatial`` float tensor with values ``1 - centre`` and ``-centre``.
    """
    if seg.ndim >= 3 and seg.shape[1] == 1:
        seg = seg[:, 0]
    seg = seg.long()
    valid = (seg >= 0) & (seg < num_classes)
    onehot = F.one_hot(torch.where(valid, seg, torch.zeros_like(seg)), num_classes)
    onehot = onehot * valid.unsqueeze(-1)
    onehot = onehot.movedim(-1, 1).float()
    return onehot - centre


class ProbUNet(nn.Module):
    """Probabilistic U-Net.

    Training (``forward``): the posterior ``Q(z | X, Y)`` is sampled once per image and combined with the U-Net
    features; the model returns the reconstruction logits and the analytic ``KL(Q || P)``.
    Sampling (:meth:`sample`): the U-Net and the prior run once per image; S latents from ``P(z | X)`` go
    through f_comb in one batched call.

    Args:
        spatial_dims: number of spatial dimensions (2 for slices, 3 for patches).
        in_channels: image channels.
        out_channels: number of classes C (2 for binary lesion masks: background/lesion softmax).
        channels: U-Net channels per scale, finest first.
        latent_dim: latent dimension N (paper: 6).
        num_convs: 3x3 convolutions per U-Net block (paper: 3).
        fcomb_channels: width of f_comb's hidden 1x1 convolutions (default ``channels[0]``).
        fcomb_convs: number of 1x1 convolutions in f_comb (paper: 3).
        posterior_centre: value subtracted from the one-hot segmentation fed to the posterior.

    Shapes:
        image ``B x in_channels x *spatial``; seg ``B x 1 x *spatial`` integer labels;
        ``forward`` -> (logits ``B x C x *spatial``, kl ``B``); ``sample`` -> ``B x S x C x *spatial``.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        latent_dim: int = 6,
        num_convs: int = 3,
        fcomb_channels: int | None = None,
        fcomb_convs: int = 3,
        posterior_centre: float = 0.5,
    ) -> None:
        super().__init__()
        if out_channels < 2:
            raise ValueError(f"out_channels must be >= 2 (softmax over classes), got {out_channels}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_dim = latent_dim
        self.posterior_centre = posterior_centre
        self.unet = UNetCore(spatial_dims, in_channels, channels, num_convs)
        self.prior_net = AxisAlignedGaussianEncoder(spatial_dims, in_channels, channels, latent_dim, num_convs)
        self.posterior_net = AxisAlignedGaussianEncoder(
            spatial_dims, in_channels + out_channels, channels, latent_dim, num_convs
        )
        self.fcomb = FComb(spatial_dims, self.unet.out_channels, latent_dim, out_channels, fcomb_channels, fcomb_convs)
        init_weights_orthogonal(self)

    def posterior_input(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """``B x (in_channels + C) x *spatial``: the image and the centred one-hot segmentation."""
        onehot = segmentation_to_onehot(seg, self.out_channels, self.posterior_centre).to(image.dtype)
        if image.ndim == 4 and image.is_contiguous(memory_format=torch.channels_last):
            return torch.cat([image, onehot], dim=1).contiguous(memory_format=torch.channels_last)
        return torch.cat([image, onehot], dim=1)

    def prior(self, image: torch.Tensor) -> Independent:
        """``P(z | X)``, batch shape ``B``, event shape ``N``."""
        return self.prior_net(image)

    def posterior(self, image: torch.Tensor, seg: torch.Tensor) -> Independent:
        """``Q(z | X, Y)``, batch shape ``B``, event shape ``N``."""
        return self.posterior_net(self.posterior_input(image, seg))

    def decode(self, image: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits ``B x S x C x *spatial`` for given latents ``z`` (``B x S x N``); the U-Net runs once."""
        return self.fcomb(self.unet(image), z)

    def forward(self, image: torch.Tensor, seg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One training pass: reconstruction logits from a posterior sample, and ``KL(Q || P)`` per image."""
        check_image_channels(image, self.in_channels, self.spatial_dims)
        q = self.posterior(image, seg)
        p = self.prior(image)
        z = q.rsample()
        logits = self.fcomb(self.unet(image), z.unsqueeze(1))[:, 0]
        return logits, kl_divergence(q, p)

    def reconstruct(self, image: torch.Tensor, seg: torch.Tensor, use_posterior_mean: bool = False) -> torch.Tensor:
        """Logits ``B x C x *spatial`` from a posterior sample (or its mean)."""
        q = self.posterior(image, seg)
        z = q.mean if use_posterior_mean else q.rsample()
        return self.decode(image, z.unsqueeze(1))[:, 0]

    def kl(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Analytic ``KL(Q(z | X, Y) || P(z | X))`` per image, shape ``B``."""
        return kl_divergence(self.posterior(image, seg), self.prior(image))

    def sample(
        self,
        image: torch.Tensor,
        num_samples: int = 16,
        generator: torch.Generator | None = None,
        use_prior_mean: bool = False,
    ) -> torch.Tensor:
        """Draw ``num_samples`` segmentation hypotheses per image.

        Args:
            image: ``B x in_channels x *spatial``.
            num_samples: S.
            generator: optional random generator for the latent noise (same generator state, same samples).
            use_prior_mean: decode the prior mean S times instead of sampling.

        Returns:
            logits ``B x S x C x *spatial``.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        check_image_channels(image, self.in_channels, self.spatial_dims)
        mu, log_sigma = self.prior_net.moments(image)
        b = mu.shape[0]
        if use_prior_mean:
            z = mu.unsqueeze(1).expand(b, num_samples, self.latent_dim)
        else:
            eps = torch.randn(
                (b, num_samples, self.latent_dim), generator=generator, device=mu.device, dtype=mu.dtype
            )
            z = mu.unsqueeze(1) + torch.exp(log_sigma).unsqueeze(1) * eps
        return self.decode(image, z)
