"""What ``--tracking mlflow`` records beyond MONAI's default MLflow handlers.

``python -m monai.bundle run training --config_file bundle/configs/train.yaml --tracking mlflow`` appends MONAI's
default :class:`~monai.handlers.MLFlowHandler`-s to ``train#handlers`` and ``validate#handlers`` (rank 0 only).
The bundle's ``run`` list then calls :func:`configure_mlflow`, which finds those handlers and adds:

- the hyper-parameters (a dict built in the config, nested values flattened to ``a.b`` keys) as MLflow params;
- the ELBO terms per iteration (``train_loss_iter``, ``train_ce_iter``, ``train_kl_iter``; MONAI's default
  handler logs the loss alone), next to the per-epoch means ``train_loss``/``train_ce``/``train_kl`` and the
  learning rate ``lr_group_0`` that MONAI already logs;
- after each validation (where GED and its terms are logged per epoch by MONAI's validator handler), a PNG grid of
  a few fixed validation images, their grader masks and sampled hypotheses (:class:`MLflowSampleGrid`).

Without ``--tracking`` (no ``MLFlowHandler`` in the lists) :func:`configure_mlflow` does nothing.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from ..engines.inferer import SamplingInferer
from ..engines.trainer import loss_terms
from ..visualize import sample_grid

__all__ = ["MLflowSampleGrid", "configure_mlflow", "flatten_params", "iteration_terms"]

logger = logging.getLogger(__name__)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings flattened to ``parent.child`` keys (MLflow params are flat); other values kept."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def iteration_terms(output: dict | list) -> dict[str, float]:
    """Per-iteration MLflow metrics from a :class:`ProbUNetTrainer` output: ``train_{loss,ce,kl}_iter``."""
    return {f"train_{k}_iter": v for k, v in loss_terms(output).items()}


class MLflowSampleGrid:
    """After each validation run, upload a PNG grid (image | grader masks | hypotheses) to an MLflow run.

    The same ``num_images`` validation images are drawn each time, and a fresh ``inferer`` generator state per
    grid (a :class:`SamplingInferer` with a ``seed`` is re-created from its settings), so the grids of successive
    validations differ only by the training progress. The evaluator's own inferer and the global RNG are left
    untouched. The file ``<artifact_path>/samples_epoch_NNNN.png`` of the run is named after the trainer epoch.

    Args:
        dataset: validation dataset; items are dicts with ``image`` (``C x H x W``) and ``label`` (``A x H x W``
            grader masks).
        inferer: a :class:`SamplingInferer` (its ``num_samples``, ``seed``, ``precision`` are used).
        num_images: how many images (the first ones of ``dataset``).
        tracking_handler: the :class:`MLFlowHandler` whose run receives the file (set by
            :func:`configure_mlflow` when left ``None``).
        artifact_path: folder inside the run's artifacts.
        image_key, label_key: dataset keys.
    """

    def __init__(
        self,
        dataset: Sequence[Mapping[str, Any]],
        inferer: SamplingInferer | None = None,
        num_images: int = 4,
        tracking_handler: MLFlowHandler | None = None,
        artifact_path: str = "samples",
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}.")
        self.dataset = dataset
        self.inferer = inferer if inferer is not None else SamplingInferer(num_samples=16, seed=0)
        self.num_images = num_images
        self.tracking_handler = tracking_handler
        self.artifact_path = artifact_path
        self.image_key = image_key
        self.label_key = label_key

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def _fresh_inferer(self) -> SamplingInferer:
        i = self.inferer
        return SamplingInferer(
            num_samples=i.num_samples,
            return_labels=True,
            seed=i.seed,
            precision=i.precision,
            channels_last=i.channels_last,
        )

    def render(self, engine: Engine, path: str | Path) -> None:
        """Write the grid for ``engine.network`` (on ``engine.state.device``) to ``path``."""
        n = min(self.num_images, len(self.dataset))
        items = [self.dataset[i] for i in range(n)]
        device = getattr(engine.state, "device", None) or torch.device("cpu")
        images = torch.stack([torch.as_tensor(d[self.image_key]) for d in items]).float().to(device)
        graders = torch.stack([torch.as_tensor(d[self.label_key]) for d in items])
        network = engine.network  # type: ignore[attr-defined]
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                samples = self._fresh_inferer()(images, network)
        finally:
            network.train(was_training)
        sample_grid(images.cpu(), graders, samples.cpu(), path=path, max_samples=self.inferer.num_samples)

    def __call__(self, engine: Engine) -> None:
        handler = self.tracking_handler
        if handler is None or handler.cur_run is None:
            return
        epoch = int(engine.state.epoch)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"samples_epoch_{epoch:04d}.png"
            self.render(engine, path)
            handler.client.log_artifact(handler.cur_run.info.run_id, str(path), artifact_path=self.artifact_path)
        logger.info(f"MLflow: logged {self.artifact_path}/{path.name}")


def _mlflow_handlers(handlers: Sequence[Any] | None) -> list[MLFlowHandler]:
    return [h for h in handlers or () if isinstance(h, MLFlowHandler)]


_JOINED_PATH = re.compile(r"(?P<head>.+) \+ '(?P<tail>/[^']+)'")


def _repair_artifacts(artifacts: Sequence[Any]) -> tuple[Any, ...]:
    """Work around MONAI 1.6.1's executed-config path when ``output_dir`` is a plain value (e.g. from
    ``--output_dir /some/dir``): ``patch_bundle_tracking`` then sets ``save_execute_config`` to the literal
    string ``"/some/dir + '/config_<time>.json'"`` (meant as an expression), writes the file to
    ``/some/dir/config_<time>.json``, and the handler silently uploads nothing."""
    fixed = []
    for a in artifacts:
        if isinstance(a, str) and a and not os.path.exists(a):
            m = _JOINED_PATH.fullmatch(a)
            if m and os.path.isfile(m["head"] + m["tail"]):
                a = m["head"] + m["tail"]
        fixed.append(a)
    return tuple(fixed)


class _ParamLogger:
    """Logs params into the run of an MLFlowHandler once it started; keys the run already has are kept (MLflow
    refuses to change a param, e.g. ``max_epochs`` raised for a resumed run that continues its MLflow run)."""

    def __init__(self, handler: MLFlowHandler, params: Mapping[str, Any]) -> None:
        self.handler = handler
        self.params = {k: str(v) for k, v in flatten_params(params).items()}

    def __call__(self, engine: Engine) -> None:
        import mlflow.entities

        run = self.handler.cur_run
        if run is None:
            return
        logged = self.handler.client.get_run(run.info.run_id).data.params
        changed = sorted(k for k, v in self.params.items() if k in logged and logged[k] != v)
        if changed:
            logger.warning(f"MLflow params cannot change within a run; keeping the logged values of {changed}.")
        new = [mlflow.entities.Param(k, v) for k, v in self.params.items() if k not in logged]
        if new:
            self.handler.client.log_batch(run.info.run_id, params=new)


def configure_mlflow(
    train_handlers: Sequence[Any] | None,
    val_handlers: Sequence[Any] | None,
    trainer: Engine | None = None,
    evaluator: Engine | None = None,
    params: Mapping[str, Any] | None = None,
    sample_grid: MLflowSampleGrid | None = None,
) -> bool:
    """Complete the MLflow handlers that ``--tracking mlflow`` appended (see the module docstring).

    Call it after the engines are built and before the trainer runs (the bundle's ``run`` list does). Returns
    whether MLflow tracking is active in this process (False without ``--tracking``, and on ranks > 0 where the
    handlers are disabled).

    Args:
        train_handlers: the trainer's handler instances (``@train#handlers``).
        val_handlers: the evaluator's handler instances (``@validate#handlers``).
        trainer: the training engine; ``params`` are logged when it starts (after the MLflow run is opened).
        evaluator: the validation engine to attach ``sample_grid`` to.
        params: hyper-parameters, logged as MLflow params (nested mappings flattened to ``a.b`` keys).
        sample_grid: logs a PNG grid into the run after each validation.
    """
    trainer_handlers, validator_handlers = _mlflow_handlers(train_handlers), _mlflow_handlers(val_handlers)
    if not trainer_handlers and not validator_handlers:
        return False
    for h in trainer_handlers:
        h.output_transform = iteration_terms
        h.artifacts = _repair_artifacts(h.artifacts)
    if params and trainer is not None and trainer_handlers:
        trainer.add_event_handler(Events.STARTED, _ParamLogger(trainer_handlers[0], params))
    if sample_grid is not None and evaluator is not None:
        if sample_grid.tracking_handler is None:
            sample_grid.tracking_handler = (validator_handlers or trainer_handlers)[0]
        sample_grid.attach(evaluator)
    return True
