"""Linear warm-up of the KL weight of the ELBO (KL annealing), or of another of its weights, as an Ignite handler."""

from __future__ import annotations

import logging

import torch.nn as nn
from ignite.engine import Engine, Events

__all__ = ["KLWarmup"]


class KLWarmup:
    """Ramp the ``beta`` of an :class:`~monai_probunet.losses.ELBOLoss` linearly up to its configured value.

    KL annealing (Bowman et al. 2016, Sønderby et al. 2016): in epoch ``e`` (1-based) the loss uses
    ``beta * min(1, start + (1 - start) * (e - 1) / warmup_epochs)``, from ``start * beta`` in the first epoch to
    the full ``beta`` from epoch ``warmup_epochs + 1`` on: the usual remedy when a VAE's posterior collapses onto the
    prior early in training. Measured on scenes32 (``--kl_warmup_epochs 50`` of 200): it did not make the posterior
    encode the person flip any sooner (epoch 45: 0.544 reconstruction accuracy vs 0.540 without), so it is off by
    default.

    With ``weight="empty_weight"`` it ramps the empty-draws term instead (``empty_warmup_epochs``), so that term
    acts only once the decoder has learnt what a lesion looks like (docs/lidc_phantom.md).

    Written by hand: ignite's ``PiecewiseLinearStateScheduler`` sets an engine-state attribute from its own event
    counter, which restarts at 0 on ``--resume``; this handler derives the weight from ``engine.state.epoch``.

    Args:
        loss: the loss whose ``weight`` attribute is scheduled; its value at construction is the final weight.
        warmup_epochs: epochs of the ramp (0: no warm-up, the handler does nothing).
        start: the first epoch's weight as a fraction of the final one, in ``[0, 1]``.
        weight: the float attribute of the loss that is ramped (``"beta"``: the KL weight; ``"empty_weight"``).
    """

    def __init__(self, loss: nn.Module, warmup_epochs: int = 0, start: float = 0.0, weight: str = "beta") -> None:
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}.")
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"start must be in [0, 1], got {start}.")
        if warmup_epochs > 0 and not isinstance(getattr(loss, weight, None), float):
            raise ValueError(
                f"a warm-up of `{weight}` needs a loss with that float weight (ELBOLoss), got {type(loss).__name__}: "
                "set kl_warmup_epochs (empty_warmup_epochs) to 0 for models trained without a KL (empty-draws) term."
            )
        self.loss = loss
        self.warmup_epochs = int(warmup_epochs)
        self.start = float(start)
        self.weight_name = weight
        self.final = float(getattr(loss, weight, 0.0))
        self.logger = logging.getLogger(__name__)

    def weight(self, epoch: int) -> float:
        """The ramped weight in (1-based) ``epoch``."""
        if self.warmup_epochs == 0:
            return self.final
        frac = self.start + (1.0 - self.start) * (epoch - 1) / self.warmup_epochs
        return self.final * min(1.0, max(frac, 0.0))

    def attach(self, engine: Engine) -> None:
        if self.warmup_epochs > 0:
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        setattr(self.loss, self.weight_name, self.weight(engine.state.epoch))
        if engine.state.epoch == self.warmup_epochs + 1:
            self.logger.info(f"warm-up done: {self.weight_name} = {self.final:g} from epoch {engine.state.epoch} on.")
