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

The MLflow run is opened by :func:`configure_mlflow` itself, not left to MONAI's handler (which, without a
``--run_name``, continues any unfinished run of the experiment): a fresh training always gets a run of its own
(named ``--run_name``, else ``run_<date>_<time>``), recorded in ``<ckpt_dir>/mlflow_run.json``; a ``--resume
true`` that finds ``checkpoint_last.pt`` continues the recorded run (its iterations logged before the
interruption are not logged twice). Ctrl-C marks the run ``KILLED``, an error ``FAILED``, a completed training
``FINISHED``. The executed config that MONAI writes next to the outputs is taken away at start-up
(:func:`take_executed_config`) and logged into the run as an artifact, so no file is left behind.

:mod:`~monai_probunet.handlers.evaluation_tracking` logs an evaluation into a run of its own.

Without ``--tracking`` (no ``MLFlowHandler`` in the lists) :func:`configure_mlflow` only removes a run record that
a fresh training in the same checkpoint folder makes stale.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler

from ..bundle_utils import ConfigValueError
from ..engines.inferer import SamplingInferer
from ..engines.trainer import loss_terms
from ..io_utils import atomic_write_json
from ..visualize import sample_grid
from .checkpoint import LastCheckpoint

__all__ = [
    "RUN_RECORD",
    "MLflowSampleGrid",
    "configure_mlflow",
    "data_params",
    "flatten_params",
    "iteration_terms",
    "take_executed_config",
]

#: the file in the checkpoint folder that names the MLflow run of the training whose checkpoints are there
RUN_RECORD = "mlflow_run.json"

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


def data_params(
    dataset_name: str, dataset_dir: str | os.PathLike, datalist: str | os.PathLike, data_seed: int,
    dataset_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """MLflow params that identify a run's data: ``dataset_name``, ``dataset_dir`` (absolute), ``datalist_sha256``
    (of its ``datalist.json``: the cases and splits) and, for a built-in dataset only, the generator settings
    ``data_seed`` and ``dataset_kwargs`` (a ``folder`` dataset is not generated: they would describe unused data)."""
    params: dict[str, Any] = {
        "dataset_name": dataset_name,
        "dataset_dir": os.path.abspath(os.fspath(dataset_dir)),
        "datalist_sha256": hashlib.sha256(Path(datalist).read_bytes()).hexdigest(),
    }
    if dataset_name != "folder":
        params.update(data_seed=data_seed, dataset_kwargs=dict(dataset_kwargs))
    return params


_EXECUTED_CONFIG: dict[str, str] = {}  # file name -> text of the executed config MONAI wrote for this process
_DEFERRED_CONFIGS: list[Path] = []  # a torchrun process's executed config, read when the run opens (see below)
_MONAI_CONFIG_NAME = re.compile(r"config_\d{8}_\d{6}\.json")  # MONAI's own name; a path the user gave stays


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def take_executed_config(save_execute_config: Any) -> str | None:
    """Move the executed config that ``--tracking mlflow`` wrote next to the outputs into memory.

    MONAI's tracking patch writes ``<output_dir>/config_<time>.json`` before the config runs, for the MLflow handler
    to upload when the run completes. Called first thing from the bundle's ``initialize`` list, this reads and
    removes that file (a ``--save_execute_config PATH`` the user gave is read and kept): :func:`configure_mlflow`
    and :func:`log_evaluation` upload the text as the run's artifact when the run opens (an interrupted run has it
    too), and a refused, interrupted or evaluation run leaves no file in its output folder. Without ``--tracking``
    (``save_execute_config`` is not a path) it does nothing.

    Under ``torchrun`` every process writes the same config, under one name where they start within the same
    second, and a rank may still be writing it when another reads it here. There the file is read when the MLflow
    run opens (on rank 0, after every rank has joined the process group, so after every rank has written it) and
    each process removes its own at exit.

    Args:
        save_execute_config: the config's ``@save_execute_config`` (the path MONAI wrote, when tracking).

    Returns:
        The file name taken, or None (none, or read later under ``torchrun``).
    """
    if not isinstance(save_execute_config, (str, os.PathLike)):
        return None
    path = Path(_repair_artifacts([os.fspath(save_execute_config)])[0])
    if _launched_by_torchrun():
        if not _DEFERRED_CONFIGS:
            atexit.register(_remove_deferred_configs)
        _DEFERRED_CONFIGS.append(path)
        return None
    try:
        text = path.read_text()
        if _MONAI_CONFIG_NAME.fullmatch(path.name):
            path.unlink()
    except FileNotFoundError:  # gone since MONAI wrote it
        return None
    _EXECUTED_CONFIG[path.name] = text
    return path.name


def _read_deferred_configs() -> None:
    for path in _DEFERRED_CONFIGS:
        if path.name not in _EXECUTED_CONFIG and path.is_file():
            _EXECUTED_CONFIG[path.name] = path.read_text()


def _remove_deferred_configs() -> None:
    for path in _DEFERRED_CONFIGS:
        if _MONAI_CONFIG_NAME.fullmatch(path.name):
            path.unlink(missing_ok=True)
    _DEFERRED_CONFIGS.clear()


def _log_executed_config(handlers: Sequence[MLFlowHandler], run_id: str) -> None:
    """Upload the config :func:`take_executed_config` took (or left to read now, under ``torchrun``), and drop its
    file from the handlers' artifacts, which they would upload when the run completes."""
    _read_deferred_configs()
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in _EXECUTED_CONFIG.items():
            (Path(tmp) / name).write_text(text)
            handlers[0].client.log_artifact(run_id, str(Path(tmp) / name))
    for h in handlers:
        h.artifacts = tuple(
            a for a in h.artifacts
            if isinstance(a, (str, os.PathLike)) and Path(os.fspath(a)).name not in _EXECUTED_CONFIG
        )


def _experiment(handler: MLFlowHandler) -> Any:
    """The handler's experiment, created (with the handler's artifact location) where it does not exist."""
    client, name = handler.client, handler.experiment_name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment = client.get_experiment(client.create_experiment(name, artifact_location=handler.artifact_location))
    if experiment.lifecycle_stage != "active":
        raise ConfigValueError(
            f"--experiment_name {name}: the experiment is deleted in {client.tracking_uri}; give another name "
            "(or restore it: mlflow experiments restore)."
        )
    return experiment


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("run_id"), str) else None


def _recorded_run(handler: MLFlowHandler, record: Path, experiment_id: str, run_name: str | None = None) -> Any | None:
    """The run ``record`` names, when it is in ``experiment_id`` of the handler's store, not deleted and (given a
    ``run_name``) of that name."""
    from mlflow.exceptions import MlflowException

    saved = _read_record(record)
    if saved is None:
        return None
    try:
        run = handler.client.get_run(saved["run_id"])
    except MlflowException:  # another store (--tracking_uri), or deleted for good
        return None
    if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
        return None
    if run_name is not None and run.info.run_name != run_name:
        return None
    return run


def _last_checkpoint(handlers: Sequence[Any] | None) -> LastCheckpoint | None:
    return next((h for h in handlers or () if isinstance(h, LastCheckpoint)), None)


def _is_rank0() -> bool:
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class _RunEnd:
    """Ends an MLflow run that is not completed: ``KILLED`` on Ctrl-C (the trainer's ``TERMINATE`` with
    ``state.interrupted`` set by :class:`~monai_probunet.handlers.LastCheckpoint`, or a ``KeyboardInterrupt``),
    ``FAILED`` on another exception."""

    def __init__(self, handlers: Sequence[MLFlowHandler], run_id: str) -> None:
        self.handlers = handlers
        self.run_id = run_id
        self.done = False

    def __call__(self, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        status = "KILLED" if error is None or isinstance(error, KeyboardInterrupt) else "FAILED"
        try:
            self.handlers[0].client.set_terminated(self.run_id, status)
        except Exception as e:  # noqa: BLE001 -- the store gone: the training's own error matters more
            logger.warning(f"MLflow: could not mark run {self.run_id} {status}: {e}")
            return
        for h in self.handlers:
            h.cur_run = None
        logger.info(f"MLflow: run {self.run_id} marked {status}.")

    def on_terminate(self, engine: Engine) -> None:
        if getattr(engine.state, "interrupted", None):
            self(None)

    def on_exception(self, engine: Engine, e: BaseException) -> None:
        self(e)
        raise e  # ignite swallows an exception when an EXCEPTION_RAISED handler returns


def _skip_logged_iterations(trainer: Engine, handlers: Sequence[MLFlowHandler], run_id: str) -> None:
    """In a continued run, skip the iterations an interrupted attempt logged already (the resumed trainer repeats
    them from its last checkpoint): their ``train_*_iter`` and ``lr_group_0`` are not logged twice."""
    steps = [m.step for m in handlers[0].client.get_metric_history(run_id, "train_loss_iter")]
    last = max(steps, default=0)
    if not last:
        return
    for h in handlers:
        if trainer.has_event_handler(h.iteration_completed, Events.ITERATION_COMPLETED):
            trainer.remove_event_handler(h.iteration_completed, Events.ITERATION_COMPLETED)
            trainer.add_event_handler(
                Events.ITERATION_COMPLETED(event_filter=lambda _, i: i > last), h.iteration_completed
            )


def _open_run(
    handlers: Sequence[MLFlowHandler], record: Path | None, resuming: bool, trainer: Engine | None
) -> Any:
    """Open the MLflow run of this training for every handler; see the module docstring."""
    first = handlers[0]
    experiment = _experiment(first)
    run = None
    if resuming and record is not None:
        run = _recorded_run(first, record, experiment.experiment_id, first.run_name)
    if run is not None:
        first.client.update_run(run.info.run_id, status="RUNNING")
        run = first.client.get_run(run.info.run_id)
        logger.info(f"MLflow: continuing run {run.info.run_name} ({run.info.run_id}) of the resumed training.")
        if trainer is not None:
            _skip_logged_iterations(trainer, handlers, run.info.run_id)
    else:
        name = first.run_name if first.run_name is not None else f"run_{time.strftime('%Y%m%d_%H%M%S')}"
        run = first.client.create_run(experiment.experiment_id, run_name=name)
        logger.info(f"MLflow: run {name} ({run.info.run_id}) in experiment {experiment.name}.")
    for h in handlers:
        h.experiment, h.cur_run = experiment, run
    if record is not None:
        atomic_write_json(record, {"run_id": run.info.run_id, "run_name": run.info.run_name,
                                   "experiment_id": experiment.experiment_id,
                                   "tracking_uri": first.client.tracking_uri})  # fmt: skip
    return run


def configure_mlflow(
    train_handlers: Sequence[Any] | None,
    val_handlers: Sequence[Any] | None,
    trainer: Engine | None = None,
    evaluator: Engine | None = None,
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    sample_grid: MLflowSampleGrid | None = None,
) -> bool:
    """Open the MLflow run and complete the MLflow handlers that ``--tracking mlflow`` appended (see the module
    docstring).

    Call it after the engines are built and before the trainer runs (the bundle's ``run`` list does). Returns
    whether MLflow tracking is active in this process (False without ``--tracking``, and on ranks > 0 where the
    handlers are disabled).

    Args:
        train_handlers: the trainer's handler instances (``@train#handlers``); the run record goes into the folder
            of the :class:`~monai_probunet.handlers.LastCheckpoint` among them (none without one).
        val_handlers: the evaluator's handler instances (``@validate#handlers``).
        trainer: the training engine; ``params`` are logged when it starts.
        evaluator: the validation engine to attach ``sample_grid`` to.
        params: hyper-parameters, logged as MLflow params (nested mappings flattened to ``a.b`` keys); a sequence
            of mappings is merged in order.
        sample_grid: logs a PNG grid into the run after each validation.
    """
    trainer_handlers, validator_handlers = _mlflow_handlers(train_handlers), _mlflow_handlers(val_handlers)
    last = _last_checkpoint(train_handlers)
    record = last.save_dir / RUN_RECORD if last is not None else None
    resuming = last is not None and last.resume and last.path.is_file()
    if not trainer_handlers and not validator_handlers:
        if record is not None and not resuming and _is_rank0() and _read_record(record) is not None:
            record.unlink()  # a fresh untracked training: the recorded run is not the one of the next checkpoints
        return False
    handlers = trainer_handlers + validator_handlers
    for h in trainer_handlers:
        h.output_transform = iteration_terms
    for h in handlers:
        h.artifacts = _repair_artifacts(h.artifacts)
    run = _open_run(handlers, record, resuming, trainer)
    end = _RunEnd(handlers, run.info.run_id)
    try:
        _log_executed_config(handlers, run.info.run_id)
    except BaseException as e:
        end(e)
        raise
    trainer_hooks = getattr(trainer, "on_error", None)  # a ProbUNetTrainer's: called before any handler
    if isinstance(trainer_hooks, list):
        trainer_hooks.append(end)
    elif last is not None:
        last.on_error.append(end)  # its EXCEPTION_RAISED handler passes the error on: none after it runs
    if trainer is not None:
        trainer.add_event_handler(Events.TERMINATE, end.on_terminate)
        if not isinstance(trainer_hooks, list):
            trainer.add_event_handler(Events.EXCEPTION_RAISED, end.on_exception)
    if isinstance(params, Mapping):
        params = [params]
    merged = {k: v for p in params or () for k, v in p.items()}
    if merged and trainer is not None and trainer_handlers:
        trainer.add_event_handler(Events.STARTED, _ParamLogger(trainer_handlers[0], merged))
    if sample_grid is not None and evaluator is not None:
        if sample_grid.tracking_handler is None:
            sample_grid.tracking_handler = (validator_handlers or trainer_handlers)[0]
        sample_grid.attach(evaluator)
    return True
