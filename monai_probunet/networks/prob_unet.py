"""The Probabilistic U-Net (Kohl et al., NeurIPS 2018): U-Net core + prior/posterior nets + f_comb.

The same class gives the paper's Appendix D ablations and the Image2Image VAE baseline (Sec. 3.2) through
``fixed_prior``, ``posterior_context`` and ``latent_injection``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers.factories import Conv
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, kl_divergence
from torch.func import functional_call

from .fcomb import FComb
from .gaussian_encoder import COVARIANCES, POOLINGS, GaussianEncoder
from .init import init_output_prior, init_weights_orthogonal
from .latent_noise import PRIOR_SAMPLINGS, prior_noise
from .unet_core import DEFAULT_NORM, UNetCore, check_image_channels
from .utils import is_channels_last

__all__ = ["LATENT_INJECTIONS", "SAMPLE_GRADIENTS", "ProbUNet", "latent_kl", "segmentation_to_onehot"]

#: where the latent enters the network: ``"fcomb"`` (the paper's model) or ``"input"`` (Appendix D ablation)
LATENT_INJECTIONS = ("fcomb", "input")
#: which weights a loss on the prior's draws trains: ``"all"`` (prior net, U-Net and f_comb), ``"prior"`` (the
#: prior net only: the draws are decoded with the decoder's weights and the U-Net's features held fixed) or
#: ``"decoder"`` (the U-Net and f_comb only: the draws are taken without gradient to the prior net)
SAMPLE_GRADIENTS = ("all", "prior", "decoder")


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


def latent_kl(q: Independent, p: Distribution) -> torch.Tensor:
    """Analytic ``KL(q || p)`` of an axis-aligned posterior and a prior, shape ``B``.

    ``p`` is an ``Independent(Normal)`` or a ``MultivariateNormal`` (``prior_covariance="full"``); in the latter
    case q is written as a ``MultivariateNormal`` with a diagonal scale, since torch registers no KL between the two
    types.
    """
    if isinstance(p, MultivariateNormal):
        q = MultivariateNormal(loc=q.mean, scale_tril=torch.diag_embed(q.stddev))
    return kl_divergence(q, p)


class ProbUNet(nn.Module):
    """Probabilistic U-Net.

    Training (``forward``): the posterior ``Q(z | X, Y)`` is sampled once per image and combined with the U-Net
    features; the model returns the reconstruction logits and the analytic ``KL(Q || P)``.
    Sampling (:meth:`sample`): the U-Net and the prior run once per image; S latents from ``P(z | X)`` go
    through f_comb in one batched call.

    Ablations (paper Appendix D) and the Image2Image VAE baseline (paper Sec. 3.2, Fig. 2d), all with the same U-Net
    core; the defaults are the paper's model:

    - ``fixed_prior=True``: "Fixing the prior: Instead of making the prior a function of the context, here we fix
      it to be a standard Gaussian distribution." ``P = N(0, I)``; there is no prior net.
    - ``fixed_prior=True, posterior_context=False``: "Fixing the prior, and not using the context (input image)
      in the posterior: [...] we also make the posterior a function of the ground truth mask only, ignoring the
      context." The posterior net sees only the centred one-hot segmentation.
    - ``latent_injection="input"``: "Injecting the latent features at the beginning of the U-Net: [...] we
      concatenate them to the context (input image) and propagate that through the U-Net." z is broadcast to the
      image grid and concatenated to the image channels; a plain 1x1 convolution maps the U-Net's last activation
      to logits (no f_comb), so sampling runs the U-Net once per sample (batched as ``B * S`` images).
    - Image2Image VAE = ``fixed_prior=True, posterior_context=False, latent_injection="input"``: "normal
      distributed latents that are broadcasted and fed into the encoder path of the U-Net [...] employs a prior
      that is not conditioned on the input image (a fixed normal distribution) and a posterior net that is not
      conditioned on the input either", trained with cross-entropy + KL only (no discriminator); the paper's best
      LIDC setting was beta = 10 and a 3-D latent space (Appendix H.1).

    Args:
        spatial_dims: number of spatial dimensions (2 for slices, 3 for patches).
        in_channels: image channels.
        out_channels: number of classes C (2 for binary lesion masks: background/lesion softmax).
        channels: U-Net channels per scale, finest first.
        latent_dim: latent dimension N (paper: 6).
        num_convs: 3x3 convolutions per U-Net block (paper: 3).
        fcomb_channels: width of f_comb's hidden 1x1 convolutions (default ``channels[0]``; unused with
            ``latent_injection="input"``).
        fcomb_convs: number of 1x1 convolutions in f_comb (paper: 3; unused with ``latent_injection="input"``).
        posterior_centre: value subtracted from the one-hot segmentation fed to the posterior.
        fixed_prior: use ``N(0, I)`` as the prior instead of a prior net conditioned on the image.
        posterior_context: feed the image to the posterior net along with the segmentation (``False``: the
            centred one-hot segmentation only).
        latent_injection: ``"fcomb"`` (z meets the U-Net's last activation in f_comb) or ``"input"`` (z is
            concatenated to the U-Net's input channels, followed by a 1x1 logits head).
        norm: normalisation after each 3x3 convolution (default instance norm; ``None``: the paper's, see
            :class:`~monai_probunet.networks.unet_core.ConvBlock`).
        encoder_pooling: how the prior and posterior nets pool their last features over the image: ``"mean"``
            (the paper's global average), ``"mean_max"`` (the spatial max beside it) or ``"mean_centre"`` (the
            average over the crop's centre beside it), see :class:`GaussianEncoder`. Not in the paper.
        prior_pooling: the prior net's pooling where it differs from ``encoder_pooling`` (``None``: the same; needs
            the prior net). ``"mean_centre"`` lets the prior see what lies under the click: the prior decides how
            often a hypothesis shows a lesion, and from the global average alone it hardly depends on the image.
            Not in the paper.
        posterior_presence: the posterior's head also sees which classes the segmentation contains (its
            ``presence_channels`` are the one-hot channels, see :class:`GaussianEncoder`). Not in the
            paper (``False``); the prior net is unchanged.
        prior_covariance: ``"diagonal"`` (the paper's axis-aligned prior) or ``"full"``: the prior net predicts
            ``N(mu, L L^T)`` with a lower-triangular ``L`` (the posterior stays axis-aligned). Not in the paper.
            The expected ``KL(Q || P)`` is smallest when P's mean and covariance equal those of the posteriors of the
            image's graders; an axis-aligned P matches only the variances, so two latent directions that the
            graders vary independently (two classes that flip independently) can be sampled together more or less
            often than they occur. Needs the prior net (not with ``fixed_prior``).
        foreground_prior: start every pixel at this foreground probability (the logits layer's bias, see
            :func:`~monai_probunet.networks.init.init_output_prior`); ``None``: the paper's initialisation, 50 %.
        prior_temperature: hypotheses are drawn from the prior with its spread scaled by this factor,
            ``z = mu + prior_temperature * L eps`` (1: the paper's), in :meth:`sample` and :meth:`prior_latents`
            (so in every inference path and the ONNX export); training (``forward``) does not use it. A setting of
            the sampler, not a weight: it is not in the state dict. Not in the paper.
        prior_sampling: how :meth:`sample` relates the S draws of one image: ``"sobol"`` (a scrambled Sobol set:
            each draw is still from the prior, and the set's share of each outcome follows the prior's far more
            closely; see :mod:`~monai_probunet.networks.latent_noise`) or ``"iid"`` (independent, the paper's).
            A setting of the sampler, not a weight: it is not in the state dict.
        sample_gradient: what a loss on the prior's draws (``forward(..., num_prior_samples=S)``, the
            energy score or the empty-draws term of :class:`~monai_probunet.losses.ELBOLoss`) trains: ``"all"``
            (the prior net through the reparameterised draws, and the U-Net and f_comb that decode them),
            ``"prior"`` (the prior net only: the draws are decoded with the U-Net's and f_comb's weights held fixed,
            so only the ELBO trains the decoder) or ``"decoder"`` (the U-Net and f_comb only: the draws are taken
            without gradient to the prior net, which only the KL trains). A training setting, not in the state dict.
            Not in the paper.
        draw_temperature: the spread of those training draws, ``z = mu + draw_temperature * L eps`` (1: the
            prior's own; 0: its mean), so a loss on them also reaches the prior's tails, where a stratified set of
            16 hypotheses always puts a draw. Only with ``sample_gradient="decoder"`` (the prior net is not trained
            by the draws, so their spread only chooses where the decoder is taught). A training setting, not in the
            state dict. Not in the paper.

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
        fixed_prior: bool = False,
        posterior_context: bool = True,
        latent_injection: str = "fcomb",
        norm: str | tuple | None = DEFAULT_NORM,
        encoder_pooling: str = "mean",
        prior_pooling: str | None = None,
        posterior_presence: bool = False,
        prior_covariance: str = "diagonal",
        foreground_prior: float | None = None,
        prior_temperature: float = 1.0,
        prior_sampling: str = "sobol",
        sample_gradient: str = "all",
        draw_temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if sample_gradient not in SAMPLE_GRADIENTS:
            raise ValueError(f"sample_gradient must be one of {SAMPLE_GRADIENTS}, got {sample_gradient!r}.")
        if not draw_temperature >= 0:
            raise ValueError(f"draw_temperature must be >= 0, got {draw_temperature!r}.")
        if draw_temperature != 1 and sample_gradient != "decoder":
            raise ValueError(
                f"draw_temperature={draw_temperature!r} needs sample_gradient='decoder' (draws that train the prior "
                f"net must come from the prior itself), got sample_gradient={sample_gradient!r}."
            )
        if not prior_temperature > 0:
            raise ValueError(f"prior_temperature must be > 0, got {prior_temperature!r}.")
        if prior_sampling not in PRIOR_SAMPLINGS:
            raise ValueError(f"prior_sampling must be one of {PRIOR_SAMPLINGS}, got {prior_sampling!r}.")
        if out_channels < 2:
            raise ValueError(f"out_channels must be >= 2 (softmax over classes), got {out_channels}.")
        if latent_injection not in LATENT_INJECTIONS:
            raise ValueError(f"latent_injection must be one of {LATENT_INJECTIONS}, got {latent_injection!r}.")
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {latent_dim}.")
        if prior_covariance not in COVARIANCES:
            raise ValueError(f"prior_covariance must be one of {COVARIANCES}, got {prior_covariance!r}.")
        if fixed_prior and prior_covariance != "diagonal":
            raise ValueError(f"prior_covariance={prior_covariance!r} needs a prior net; fixed_prior=True is N(0, I).")
        if prior_pooling is not None and prior_pooling not in POOLINGS:
            raise ValueError(f"prior_pooling must be None or one of {POOLINGS}, got {prior_pooling!r}.")
        if fixed_prior and prior_pooling is not None:
            raise ValueError(f"prior_pooling={prior_pooling!r} needs a prior net; fixed_prior=True is N(0, I).")
        if fixed_prior and sample_gradient == "prior":
            raise ValueError("sample_gradient='prior' needs a prior net to train; fixed_prior=True is N(0, I).")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.latent_dim = latent_dim
        self.posterior_centre = posterior_centre
        self.fixed_prior = bool(fixed_prior)
        self.posterior_context = bool(posterior_context)
        self.latent_injection = latent_injection
        self.prior_sampling = prior_sampling
        self.sample_gradient = sample_gradient
        self.draw_temperature = float(draw_temperature)
        # registration order (unet, prior, posterior, f_comb/head) fixes the initialisation's RNG stream
        inject_input = latent_injection == "input"
        self.unet = UNetCore(
            spatial_dims, in_channels + (latent_dim if inject_input else 0), channels, num_convs, norm=norm
        )
        self.prior_net: GaussianEncoder | None = None
        if not self.fixed_prior:
            self.prior_net = GaussianEncoder(
                spatial_dims,
                in_channels,
                channels,
                latent_dim,
                num_convs,
                norm=norm,
                covariance=prior_covariance,
                pooling=encoder_pooling if prior_pooling is None else prior_pooling,
            )
        self.posterior_net = GaussianEncoder(
            spatial_dims,
            (in_channels if self.posterior_context else 0) + out_channels,
            channels,
            latent_dim,
            num_convs,
            norm=norm,
            presence_channels=out_channels if posterior_presence else 0,
            pooling=encoder_pooling,
        )
        self.fcomb: FComb | None = None
        self.head: nn.Module | None = None
        if inject_input:
            self.head = Conv[Conv.CONV, spatial_dims](self.unet.out_channels, out_channels, kernel_size=1)
        else:
            self.fcomb = FComb(
                spatial_dims, self.unet.out_channels, latent_dim, out_channels, fcomb_channels, fcomb_convs
            )
        init_weights_orthogonal(self)
        for encoder in (self.prior_net, self.posterior_net):
            if encoder is not None:
                encoder.start_as_mean_pooling()
        if foreground_prior is not None:
            init_output_prior(self.head if inject_input else self.fcomb.rest[-1], foreground_prior)
        self.register_buffer("prior_temperature", torch.tensor(float(prior_temperature)), persistent=False)

    def posterior_input(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """``B x (in_channels + C) x *spatial``: the image and the centred one-hot segmentation.

        With ``posterior_context=False``: ``B x C x *spatial``, the centred one-hot segmentation only.
        """
        onehot = segmentation_to_onehot(seg, self.out_channels, self.posterior_centre).to(image.dtype)
        x = torch.cat([image, onehot], dim=1) if self.posterior_context else onehot
        return _like_memory_format(x, self.posterior_net)

    def prior_moments(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, log_sigma)`` of ``P(z | X)``, each ``B x N`` float32 (zeros for the fixed prior ``N(0, I)``).

        With ``prior_covariance="full"`` ``log_sigma`` is the log of the diagonal of ``L``: use
        :meth:`prior_loc_scale_tril` or :meth:`prior_latents` there.
        """
        if self.prior_net is None:
            zeros = torch.zeros((image.shape[0], self.latent_dim), device=image.device, dtype=torch.float32)
            return zeros, zeros
        return self.prior_net.moments(image)

    def prior_loc_scale_tril(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu`` (``B x N``) and the lower-triangular ``L`` (``B x N x N``, ``P = N(mu, L L^T)``), float32."""
        if self.prior_net is None:
            mu, log_sigma = self.prior_moments(image)
            return mu, torch.diag_embed(torch.exp(log_sigma))
        return self.prior_net.loc_scale_tril(image)

    def prior_latents(self, image: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Latents ``z = mu + t L eps`` (``B x S x N``) of the prior for standard-normal ``eps`` (``B x S x N`` or
        ``1 x S x N``, shared by the batch), ``t`` = :attr:`prior_temperature`."""
        eps = eps * self.prior_temperature.to(eps.device, eps.dtype)
        if self.prior_net is not None and self.prior_net.covariance == "full":
            mu, scale_tril = self.prior_loc_scale_tril(image)
            return mu.unsqueeze(1) + eps.to(mu.dtype) @ scale_tril.transpose(1, 2)
        mu, log_sigma = self.prior_moments(image)
        return mu.unsqueeze(1) + torch.exp(log_sigma).unsqueeze(1) * eps.to(mu.dtype)

    def prior(self, image: torch.Tensor) -> Distribution:
        """``P(z | X)`` (``N(0, I)`` with ``fixed_prior``), batch shape ``B``, event shape ``N``: an
        ``Independent(Normal)``, or a ``MultivariateNormal`` with ``prior_covariance="full"``."""
        if self.prior_net is None:
            mu, log_sigma = self.prior_moments(image)
            return Independent(Normal(loc=mu, scale=torch.exp(log_sigma)), 1)
        return self.prior_net(image)

    def posterior(self, image: torch.Tensor, seg: torch.Tensor) -> Independent:
        """``Q(z | X, Y)`` (``Q(z | Y)`` without ``posterior_context``), batch shape ``B``, event shape ``N``."""
        return self.posterior_net(self.posterior_input(image, seg))

    def decode(self, image: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Logits ``B x S x C x *spatial`` for given latents ``z`` (``B x S x N``).

        With f_comb injection the U-Net runs once per image; with input injection it runs once on the ``B * S``
        images, each concatenated with its broadcast latent.
        """
        return self._decode(image, z)

    def _decode(
        self, image: torch.Tensor, z: torch.Tensor, features: torch.Tensor | None = None, fixed: bool = False
    ) -> torch.Tensor:
        """:meth:`decode`, reusing the U-Net's ``features`` (f_comb injection) if given; with ``fixed=True`` the
        U-Net's and f_comb's (or the head's) weights and the features are held fixed: gradients reach ``z`` only."""

        def run(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
            if not fixed:
                return module(*args)
            return functional_call(module, {k: v.detach() for k, v in module.named_parameters()}, args)

        if self.fcomb is not None:
            features = self.unet(image) if features is None else features
            return run(self.fcomb, features.detach() if fixed else features, z)
        b = image.shape[0]
        if z.ndim != 3 or z.shape[0] != b or z.shape[2] != self.latent_dim:
            raise ValueError(f"z must be B x S x {self.latent_dim} with B = {b}, got {tuple(z.shape)}.")
        s = z.shape[1]
        spatial = image.shape[2:]
        images = image.repeat_interleave(s, dim=0)  # (B * S) x in_channels x *spatial, sample-major per image
        tiled = z.reshape(b * s, self.latent_dim, *([1] * len(spatial))).to(images.dtype).expand(-1, -1, *spatial)
        logits = run(self.head, run(self.unet, _like_memory_format(torch.cat([images, tiled], dim=1), self.unet)))
        return logits.reshape(b, s, *logits.shape[1:])

    def forward(
        self, image: torch.Tensor, seg: torch.Tensor, num_prior_samples: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One training pass: reconstruction logits from a posterior sample, and ``KL(Q || P)`` per image.

        With ``num_prior_samples = S > 0`` also the logits of S reparameterised draws from the prior
        (``B x S x C x *spatial``, decoded with the same U-Net features), so a loss on the samples themselves
        reaches the prior net (:class:`~monai_probunet.losses.ELBOLoss`'s ``sample_weight``), and with
        ``sample_gradient="all"`` the decoder too.
        """
        check_image_channels(image, self.in_channels, self.spatial_dims)
        q = self.posterior(image, seg)
        p = self.prior(image)
        z = q.rsample().unsqueeze(1)
        if num_prior_samples <= 0:
            return self.decode(image, z)[:, 0], latent_kl(q, p)
        z_prior = p.rsample((num_prior_samples,)).transpose(0, 1)
        if self.sample_gradient == "decoder":
            z_prior = z_prior.detach()
            if self.draw_temperature != 1:
                mean = p.mean.detach().unsqueeze(1)
                z_prior = mean + self.draw_temperature * (z_prior - mean)
        if self.sample_gradient in ("all", "decoder"):
            logits = self.decode(image, torch.cat([z, z_prior], dim=1))
            return logits[:, 0], latent_kl(q, p), logits[:, 1:]
        features = self.unet(image) if self.fcomb is not None else None
        logits = self._decode(image, z, features)
        return logits[:, 0], latent_kl(q, p), self._decode(image, z_prior, features, fixed=True)

    def reconstruct(self, image: torch.Tensor, seg: torch.Tensor, use_posterior_mean: bool = False) -> torch.Tensor:
        """Logits ``B x C x *spatial`` from a posterior sample (or its mean)."""
        q = self.posterior(image, seg)
        z = q.mean if use_posterior_mean else q.rsample()
        return self.decode(image, z.unsqueeze(1))[:, 0]

    def kl(self, image: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        """Analytic ``KL(Q(z | X, Y) || P(z | X))`` per image, shape ``B``."""
        return latent_kl(self.posterior(image, seg), self.prior(image))

    def sample(
        self,
        image: torch.Tensor,
        num_samples: int = 16,
        generator: torch.Generator | None = None,
        use_prior_mean: bool = False,
    ) -> torch.Tensor:
        """Draw ``num_samples`` segmentation hypotheses per image.

        The prior runs once per image; the U-Net once per image with f_comb injection, once on ``B * S`` images
        with input injection.

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
        b = image.shape[0]
        if use_prior_mean:
            mu, _ = self.prior_moments(image)
            z = mu.unsqueeze(1).expand(b, num_samples, self.latent_dim)
        else:
            eps = prior_noise(b, num_samples, self.latent_dim, generator, image.device, self.prior_sampling)
            z = self.prior_latents(image, eps)
        return self.decode(image, z)


def _like_memory_format(x: torch.Tensor, network: nn.Module) -> torch.Tensor:
    """2-D ``x`` in the memory format of ``network``'s first convolution weight (channels-last after
    ``network.to(memory_format=torch.channels_last)``, else contiguous); other ``x`` unchanged.

    The format is read from the weight, not from the image: a 1-channel image is contiguous in both formats, so it
    cannot tell, whereas the weights these inputs meet have at least 2 input channels. A channels-first model thus
    runs channels-first throughout (``benchmarks/train_speed.py`` times the formats).
    """
    if x.ndim != 4:
        return x
    return x.contiguous(memory_format=torch.channels_last) if is_channels_last(network) else x.contiguous()
