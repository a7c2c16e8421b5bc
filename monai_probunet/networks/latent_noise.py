"""Standard-normal noise for the prior's draws: independent, or stratified by a scrambled Sobol sequence.

``z = mu + t L eps`` turns the noise into hypotheses. With independent ``eps`` the share of S hypotheses that fall
on one side of a boundary of the latent space (the decoder drawing a lesion or not) is binomial: for a prior that
puts half its mass there, 16 draws show 8 +- 2 lesions. A scrambled Sobol point set (``torch.quasirandom.SobolEngine``:
Joe & Kuo's direction numbers, a random linear matrix scramble and a random digital shift) spreads the S points
evenly over the unit cube: for S a power of two each coordinate has one point in each interval of length 1/S, and
the first two coordinates one in each dyadic box of area 1/S. Mapped through the normal quantile, each point is
still a draw from ``N(0, I)`` (the random digital shift makes every point uniform), so every hypothesis is a draw
from the prior; the set as a whole follows the prior's proportions far more closely than independent draws.
"""

from __future__ import annotations

import torch
from torch.quasirandom import SobolEngine

__all__ = ["PRIOR_SAMPLINGS", "prior_noise"]

#: how the S draws of one image are related: ``"iid"`` (independent, the paper's) or ``"sobol"`` (stratified)
PRIOR_SAMPLINGS = ("iid", "sobol")

# keeps the normal quantile finite where a coordinate lands on 0 (at most 5.2 standard deviations out)
_UNIT_MARGIN = 1e-7


def prior_noise(
    batch: int,
    num_samples: int,
    latent_dim: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    method: str = "iid",
) -> torch.Tensor:
    """Noise ``eps`` (``batch x num_samples x latent_dim``, float32) whose rows are standard-normal draws.

    Args:
        batch: B, images; each gets its own draws.
        num_samples: S, draws per image.
        latent_dim: N.
        generator: random generator; the same state gives the same noise. With ``"sobol"`` it draws one scrambling
            seed per image (on the CPU when the generator is, else on its device).
        device: where the noise is returned.
        method: one of :data:`PRIOR_SAMPLINGS`.

    Returns:
        ``B x S x N`` float32.
    """
    if method not in PRIOR_SAMPLINGS:
        raise ValueError(f"prior sampling must be one of {PRIOR_SAMPLINGS}, got {method!r}.")
    if method == "iid":
        return torch.randn((batch, num_samples, latent_dim), generator=generator, device=device, dtype=torch.float32)
    seed_device = generator.device if generator is not None else "cpu"
    seeds = torch.randint(0, 2**31 - 1, (batch,), generator=generator, device=seed_device).tolist()
    points = []
    for seed in seeds:
        sobol = SobolEngine(latent_dim, scramble=True, seed=int(seed))
        points.append(sobol.draw(num_samples, dtype=torch.float64))
    u = torch.stack(points).clamp_(_UNIT_MARGIN, 1.0 - _UNIT_MARGIN)
    eps = torch.special.ndtri(u).to(torch.float32)
    return eps.to(device) if device is not None else eps
