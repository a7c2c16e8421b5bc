"""Prior and posterior nets: the U-Net encoder, global average pooling, 1x1 conv to a Gaussian over the latent space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.layers.factories import Conv
from torch.distributions import Independent, MultivariateNormal, Normal

from .unet_core import DEFAULT_NORM, UNetEncoder

__all__ = ["COVARIANCES", "POOLINGS", "GaussianEncoder", "LOG_SIGMA_BOUND"]

#: |log sigma| is softly bounded by this value (sigma in [4.5e-5, 2.2e4]) so ``exp`` can never overflow to inf
#: or collapse to 0, while gradients stay non-zero (a tanh soft-clamp instead of a hard clamp).
LOG_SIGMA_BOUND = 10.0

#: covariance of the encoder's Gaussian: ``"diagonal"`` (the paper's axis-aligned Gaussian) or ``"full"``
COVARIANCES = ("diagonal", "full")

#: how the encoder pools its last features over the image: the paper's global average, or beside it the spatial max
#: or the average over the crop's centre
POOLINGS = ("mean", "mean_max", "mean_centre")


class GaussianEncoder(nn.Module):
    """Maps an input to ``N(mu, diag(sigma^2))`` (or ``N(mu, L L^T)``) over a ``latent_dim``-dimensional latent space.

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
        pooling: ``"mean"`` (the paper's global average of the last block's features), ``"mean_max"`` (their
            spatial max beside it) or ``"mean_centre"`` (beside it, their average over the central half of the
            feature map along each spatial dimension: for an ``8 x 8`` map the central ``4 x 4``). After an
            instance normalisation every channel has zero mean over the image before the ReLU, so the global
            average tells the head little about what the image holds; the max keeps the strongest response
            anywhere, the centre's average what lies at the centre of the crop, where the inference path puts
            the click. The head's weights on the added half start at zero (:meth:`start_as_mean_pooling`). Not
            in the paper.
        covariance: ``"diagonal"`` (the paper's axis-aligned Gaussian) or ``"full"``: the head also predicts the
            ``N (N - 1) / 2`` entries below the diagonal of a Cholesky factor ``L``, and the Gaussian is
            ``N(mu, L L^T)``. Minimising the expected ``KL(Q || P)`` over ``P`` matches P's mean and covariance to
            those of the posteriors; an axis-aligned P can match only the variances, so latent directions that
            the posteriors use independently can come out correlated under P (see ``ProbUNet.prior_covariance``).

    Shapes:
        ``forward``: ``B x in_channels x *spatial`` -> ``Independent(Normal)`` (``"diagonal"``) or
        ``MultivariateNormal`` (``"full"``) with batch shape ``B`` and event shape ``latent_dim``;
        :meth:`moments` returns the ``B x latent_dim`` mean and log of the diagonal of ``L`` (log sigma when
        ``"diagonal"``); :meth:`loc_scale_tril` the mean and the ``B x latent_dim x latent_dim`` factor ``L``.
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
        covariance: str = "diagonal",
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}.")
        if not 0 <= presence_channels <= in_channels:
            raise ValueError(f"presence_channels must be in [0, in_channels={in_channels}], got {presence_channels}.")
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}.")
        self.latent_dim = latent_dim
        self.presence_channels = presence_channels
        self.covariance = covariance
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.pooling = pooling
        num_out = 2 * latent_dim + (latent_dim * (latent_dim - 1) // 2 if covariance == "full" else 0)
        self.encoder = UNetEncoder(spatial_dims, in_channels, channels, num_convs, norm=norm)
        pooled = channels[-1] * (1 if pooling == "mean" else 2)
        self.head = Conv[Conv.CONV, spatial_dims](pooled + presence_channels, num_out, kernel_size=1)

    def start_as_mean_pooling(self) -> None:
        """Zero the head's weights on the spatial max or the centre's average, so the encoder starts as the paper's."""
        if self.pooling != "mean":
            c = self.encoder.channels[-1]
            with torch.no_grad():
                self.head.weight[:, c : 2 * c] = 0.0

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 ``B x num_out`` head output: mean, raw log sigma, then (full) the entries below L's diagonal."""
        f = self.encoder(x)[-1]
        h = f.mean(dim=tuple(range(2, f.ndim)), keepdim=True)
        if self.pooling == "mean_max":
            h = torch.cat([h, f.amax(dim=tuple(range(2, f.ndim)), keepdim=True)], dim=1)
        elif self.pooling == "mean_centre":
            centre = f[(slice(None), slice(None), *(slice(n // 4, n - n // 4) for n in f.shape[2:]))]
            h = torch.cat([h, centre.mean(dim=tuple(range(2, f.ndim)), keepdim=True)], dim=1)
        if self.presence_channels:
            present = x[:, x.shape[1] - self.presence_channels :].amax(dim=tuple(range(2, x.ndim)), keepdim=True)
            h = torch.cat([h, present.to(h.dtype)], dim=1)
        return self.head(h).flatten(1).float()

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)`` from the head's output, log sigma softly bounded by ``LOG_SIGMA_BOUND``."""
        n = self.latent_dim
        log_sigma = LOG_SIGMA_BOUND * torch.tanh(out[:, n : 2 * n] / LOG_SIGMA_BOUND)
        return out[:, :n], log_sigma

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mu, log_sigma)``, each ``B x latent_dim``, in float32 (``"full"``: log of L's diagonal)."""
        return self._split(self._head(x))

    def loc_scale_tril(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``mu`` (``B x N``) and the lower-triangular ``L`` (``B x N x N``, diagonal ``sigma``), float32."""
        out = self._head(x)
        mu, log_sigma = self._split(out)
        scale_tril = torch.diag_embed(torch.exp(log_sigma))
        if self.covariance == "full":
            rows, cols = torch.tril_indices(self.latent_dim, self.latent_dim, offset=-1, device=out.device)
            below = torch.zeros_like(scale_tril)
            below[:, rows, cols] = out[:, 2 * self.latent_dim :]
            scale_tril = scale_tril + below
        return mu, scale_tril

    def forward(self, x: torch.Tensor) -> Independent | MultivariateNormal:
        if self.covariance == "full":
            mu, scale_tril = self.loc_scale_tril(x)
            return MultivariateNormal(loc=mu, scale_tril=scale_tril)
        mu, log_sigma = self.moments(x)
        return Independent(Normal(loc=mu, scale=torch.exp(log_sigma)), 1)
