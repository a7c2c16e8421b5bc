"""The training engine: MONAI's SupervisedTrainer with the ELBO terms, device-aware bf16, channels_last and compile."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Events
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys

from ..bundle_utils import ConfigValueError, TrainingInterrupted, quiet_user_errors
from .precision import (
    autocast_context,
    explain_channels_last,
    explain_precision,
    network_normalises,
    resolve_compile,
)

__all__ = ["ProbUNetTrainer", "loss_terms"]


def loss_terms(output: dict | list) -> dict[str, float]:
    """``{"loss", "ce", "kl"}`` (and ``"energy"`` with a sample loss) as floats from a :class:`ProbUNetTrainer`
    iteration output (for logging handlers)."""
    first = output[0] if isinstance(output, list) else output
    return {k: float(torch.as_tensor(first[k]).detach()) for k in ("loss", "ce", "kl", "energy") if k in first}


def _auto_note(key: str, value: Any, device: str | torch.device) -> str:
    """`` (key auto on cpu)`` where a setting was left to ``auto``, for the log line; else nothing."""
    return f" ({key} auto on {torch.device(device).type})" if str(value).strip().lower() == "auto" else ""


class ProbUNetTrainer(SupervisedTrainer):
    """SupervisedTrainer for models trained by the ELBO (and deterministic baselines).

    Differences from :class:`monai.engines.SupervisedTrainer`:

    - the loss function returns :class:`monai_probunet.losses.ELBOTerms`; ``engine.state.output`` holds
      ``loss``, ``ce`` and ``kl`` (detached) so handlers can log the terms separately;
    - ``precision="bf16"`` runs the forward pass under ``torch.autocast`` on the engine's device type (CPU too,
      unlike MONAI's CUDA-only ``amp``) with float32 master weights; ``"auto"`` picks bf16 on a GPU with bf16 and on
      a CPU where native bf16 measured faster than fp32 (:func:`~monai_probunet.engines.resolve_precision`);
    - ``channels_last=True`` converts the network and 2-D inputs to the channels-last memory format (``"auto"``: on
      a CUDA device, and on a CPU where it measured faster at start-up, with the network's normalisation or without,
      as the network has it: :func:`~monai_probunet.engines.resolve_channels_last`);
    - ``torch_compile`` runs the training pass through ``torch.compile`` (``"auto"``: ``reduce-overhead``, i.e. CUDA
      graphs, on a CUDA device; eager elsewhere; :func:`~monai_probunet.engines.resolve_compile`). ``network``
      itself stays the plain module (its state dict, checkpoints and the evaluators' sampling are unchanged);
    - ``prior_samples=S > 0`` also decodes S draws from the prior in every training pass
      (``network(image, seg=label, num_prior_samples=S)``) and passes them with all graders' masks (the batch's
      ``graders_key``) to the loss (:class:`~monai_probunet.losses.ELBOLoss` with ``sample_weight > 0`` or
      ``empty_weight > 0``);
    - the batch's tensors reach the network as plain tensors: MONAI's random transforms return MetaTensors, whose
      metadata dispatch on every operation they reach makes a CPU training step of ``train.yaml`` 1.1-1.2x slower
      (the same weights; ``benchmarks/default_epoch.py``);
    - gradients are reset to ``None`` before each step (``optim_set_to_none=True``, PyTorch's own default for
      ``zero_grad``; MONAI's is ``False``): no pass that fills every gradient with zeros before the backward adds
      into it (measured in docs/benchmarks.md). A parameter outside a step's graph is then left alone by the
      optimizer, as in plain PyTorch;
    - :meth:`run` raises :class:`~monai_probunet.bundle_utils.TrainingInterrupted` (a ``KeyboardInterrupt``) when
      a :class:`~monai_probunet.handlers.LastCheckpoint` handler stopped the run on Ctrl-C, with its message on
      how to resume;
    - an exception that stops training goes to every hook in :attr:`on_error` before any ``EXCEPTION_RAISED``
      handler (ignite stops at the first handler that raises it again, MONAI's ``StatsHandler`` among them), and
      a :class:`~monai_probunet.bundle_utils.UserInputError` is not logged with a traceback.

    Use ``prepare_batch=monai.engines.PrepareBatchExtraInput(extra_keys={"seg": "label"})`` so the network is
    called as ``network(image, seg=label)``. Gradient accumulation is not supported (``accumulation_steps=1``).

    Args:
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"``.
        channels_last: use the channels-last memory format for 2-D networks (``True``, ``False`` or ``"auto"``).
        torch_compile: ``"auto"``, a boolean or a ``torch.compile`` mode (``"reduce-overhead"``, ...) for the
            training pass.
        prior_samples: prior draws per image decoded in every training pass when the loss scores them (its
            ``sample_weight > 0`` or ``empty_weight > 0``; 0: none).
        graders_key: the batch key of all graders' masks (``B x A x *spatial``), needed with ``prior_samples``.
        optim_set_to_none: reset gradients to ``None`` (not to zeros) before each step.
        other args: as :class:`monai.engines.SupervisedTrainer`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | torch.utils.data.DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        iteration_update: Callable | None = None,
        inferer: Any = None,
        postprocessing: Any = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
        metric_cmp_fn: Callable = lambda current, prev: current > prev,
        train_handlers: Sequence | None = None,
        precision: str = "auto",
        channels_last: bool | str = False,
        torch_compile: bool | str = False,
        prior_samples: int = 0,
        graders_key: str = "graders",
        optim_set_to_none: bool = True,
        **kwargs: Any,
    ) -> None:
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ConfigValueError(f"--max_epochs: expected a whole number of epochs >= 1, got {max_epochs!r}.")
        self.channels_last_requested = channels_last
        channels_last, layout_reason = explain_channels_last(
            channels_last, device, precision, norm=network_normalises(network)
        )
        compile_mode = resolve_compile(torch_compile, device)
        compile_reason = (f"torch.compile mode {compile_mode}" if compile_mode else "not compiled") + _auto_note(
            "torch_compile", torch_compile, device
        )
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=None,  # attached below, after this trainer's own error handler
            optim_set_to_none=optim_set_to_none,
            **kwargs,
        )
        # ignite hands an exception to the EXCEPTION_RAISED handlers in the order they were added, and the first
        # that raises it again ends the round (MONAI's StatsHandler logs a traceback and raises): this trainer's
        # own handler comes first, so that every `on_error` hook sees the error and a user's error gets no traceback
        #: called with the exception that stops training, before it is passed on (e.g. to end an MLflow run)
        self.on_error: list[Callable[[BaseException], None]] = []
        self.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)
        quiet_user_errors(self.logger)
        if train_handlers is not None:
            self._register_handlers(train_handlers)
        if self.accumulation_steps != 1:
            raise ValueError("ProbUNetTrainer does not support gradient accumulation (accumulation_steps must be 1).")
        self.precision_requested = precision
        self.precision, self.precision_reason = explain_precision(precision, device)
        self.add_event_handler(
            Events.STARTED,
            lambda engine: engine.logger.info(f"{engine.precision_reason}; {layout_reason}; {compile_reason}"),
        )
        # drawn only for a loss that scores them (ELBOLoss with sample_weight > 0 or empty_weight > 0)
        scored = any(getattr(loss_function, k, 0.0) > 0 for k in ("sample_weight", "empty_weight"))
        self.prior_samples = int(prior_samples) if scored else 0
        net = getattr(network, "module", network)  # DistributedDataParallel wraps the network
        if self.prior_samples > 0 and "num_prior_samples" not in inspect.signature(net.forward).parameters:
            raise ConfigValueError(
                f"--sample_weight: {type(net).__name__} draws no prior samples; the loss on samples needs a ProbUNet."
            )
        self.graders_key = graders_key
        self.channels_last = False
        if channels_last:
            self.set_channels_last(True)
        self.compile_mode = compile_mode
        #: what the training pass calls: ``network``, or ``network`` under ``torch.compile`` (same parameters)
        self.train_network = torch.compile(self.network, mode=compile_mode) if compile_mode else self.network

    def _on_exception(self, engine: Any, e: BaseException) -> None:
        for hook in self.on_error:
            try:
                hook(e)
            except Exception as hook_error:  # noqa: BLE001 -- the training's own error is the one to report
                self.logger.warning(f"while stopping on {type(e).__name__}: {type(hook_error).__name__}: {hook_error}")
        raise e

    def run(self) -> None:  # type: ignore[override]
        """Train; raise :class:`~monai_probunet.bundle_utils.TrainingInterrupted` if Ctrl-C stopped the run."""
        super().run()
        message = getattr(self.state, "interrupted", None)
        if message:
            raise TrainingInterrupted(message)

    def set_channels_last(self, channels_last: bool) -> None:
        """Compute in the channels-last (``True``) or channels-first memory format from now on: the network's weights
        and the 2-D inputs (a resumed ``channels_last: auto`` run keeps the format of the run it continues)."""
        self.channels_last = bool(channels_last)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.network.to(memory_format=fmt)

    @staticmethod
    def _plain(batchdata: Any) -> Any:
        """The batch (a mapping, a sequence or a tensor) with each MetaTensor's plain tensor (no copy)."""
        plain = lambda x: x.as_tensor() if isinstance(x, MetaTensor) else x
        if isinstance(batchdata, Mapping):
            return {k: plain(v) for k, v in batchdata.items()}
        if isinstance(batchdata, (list, tuple)):
            return type(batchdata)(plain(v) for v in batchdata)
        return plain(batchdata)

    def _to_memory_format(self, x: Any) -> Any:
        if self.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _iteration(self, engine: ProbUNetTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batchdata = self._plain(batchdata)
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        inputs = self._to_memory_format(inputs)
        loss_kwargs: dict = {}
        if self.prior_samples > 0:
            if self.graders_key not in batchdata:
                raise ValueError(
                    f"prior_samples > 0 needs every batch to hold all graders' masks under {self.graders_key!r} "
                    "(train.yaml: a CopyItemsd of the label before RandGraderd)."
                )
            kwargs = {**kwargs, "num_prior_samples": self.prior_samples}
            loss_kwargs["graders"] = batchdata[self.graders_key].to(engine.state.device)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with autocast_context(self.precision, engine.state.device):
            pred = engine.inferer(inputs, engine.train_network, *args, **kwargs)
        engine.state.output[Keys.PRED] = pred[0] if isinstance(pred, (tuple, list)) else pred
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        terms = engine.loss_function(pred, targets, **loss_kwargs)
        engine.state.output[Keys.LOSS] = terms.loss
        engine.state.output["ce"] = terms.ce.detach()
        engine.state.output["kl"] = terms.kl.detach()
        if getattr(terms, "energy", None) is not None:
            engine.state.output["energy"] = terms.energy
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        terms.loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
