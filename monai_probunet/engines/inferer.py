"""Sampling inferer: S hypotheses per image from any model with ``sample(image, num_samples)``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.inferers import Inferer

from ..networks.utils import hypotheses_to_labels, is_channels_last
from .precision import autocast_context, check_channels_last, resolve_channels_last

__all__ = ["SamplingInferer"]


class SamplingInferer(Inferer):
    """Calls ``network.sample(image, num_samples)`` (unwrapping DDP) and returns labels or logits.

    Args:
        num_samples: S, hypotheses per image.
        return_labels: return arg-max label maps ``B x S x *spatial`` (default) instead of logits
            ``B x S x C x *spatial``.
        seed: if given, latent noise comes from a private generator seeded with it (reproducible, and the global
            RNG that drives training is left untouched); otherwise from the global RNG. Attached to an evaluator
            as a handler (``attach``), the generator is re-seeded at every evaluation run, so successive
            validations score the same latent draws and their GED differences reflect the model, not the noise.
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` (see :func:`resolve_precision`).
        channels_last: feed 2-D inputs in channels-last memory format (``True``, ``False`` or ``"auto"``: on a CUDA
            device, and on a CPU where the network is channels-last, see :func:`resolve_channels_last`).
    """

    def __init__(
        self,
        num_samples: int = 16,
        return_labels: bool = True,
        seed: int | None = None,
        precision: str = "fp32",
        channels_last: bool | str = False,
    ) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.num_samples = num_samples
        self.return_labels = return_labels
        self.seed = seed
        self.precision = precision
        check_channels_last(channels_last)  # a bad value fails here, not at the first call
        self.channels_last = channels_last
        self._generator: torch.Generator | None = None

    def reset(self, engine: Engine | None = None) -> None:
        """Re-seed the private generator (next call starts the same noise sequence again)."""
        self._generator = None

    def attach(self, engine: Engine) -> None:
        """Re-seed at the start of every run of ``engine`` (use it in an evaluator's handlers)."""
        engine.add_event_handler(Events.STARTED, self.reset)

    def _get_generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def _channels_last(self, model: nn.Module, device: torch.device) -> bool:
        """Feed channels-last inputs? ``"auto"`` on a CPU follows the network's own format (channels-last where the
        trainer chose it by measurement, and as kept on resume; a loaded model is channels-first)."""
        if check_channels_last(self.channels_last) == "auto" and torch.device(device).type == "cpu":
            return is_channels_last(model)
        return resolve_channels_last(self.channels_last, device, self.precision)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        model = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
        if not hasattr(model, "sample"):
            raise TypeError(f"{type(model).__name__} has no sample(image, num_samples) method.")
        if inputs.ndim == 4 and self._channels_last(model, inputs.device):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast_context(self.precision, inputs.device):
            logits = model.sample(inputs, self.num_samples, generator=self._get_generator(inputs.device))
        return hypotheses_to_labels(logits) if self.return_labels else logits.float()
