"""The "last" checkpoint for resuming: network, optimizer, LR scheduler and trainer state, written atomically."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["LastCheckpoint"]

logger = logging.getLogger(__name__)


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


class _BestMetricState:
    """``best_metric`` / ``best_metric_epoch`` of a MONAI evaluator as a state-dict object."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict[str, float | int]:
        return {
            "best_metric": float(getattr(self.engine.state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(self.engine.state, "best_metric_epoch", -1)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.engine.state.best_metric = state["best_metric"]
        self.engine.state.best_metric_epoch = state["best_metric_epoch"]


class _KeyMetricSaverState:
    """The ranking list of a key-metric :class:`CheckpointSaver`, so ``model.pt`` keeps the best model after a
    resume (MONAI's saver restores it with ``load_state_dict`` but has no public ``state_dict``)."""

    def __init__(self, saver: CheckpointSaver) -> None:
        self.saver = saver

    def state_dict(self) -> dict[str, Any]:
        return dict(self.saver._key_metric_checkpoint.state_dict())  # type: ignore[union-attr]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.saver.load_state_dict(dict(state))


class LastCheckpoint:
    """Save and restore everything needed to continue an interrupted training run.

    Every ``save_interval`` epochs (and when training completes) the state dicts of ``save_dict`` plus the
    trainer's own state (iteration, epoch) go to ``save_dir/filename``, replacing the previous file atomically:
    ignite's :class:`~ignite.handlers.DiskSaver` (``atomic=True``) serializes to a temporary file in the same
    folder and ``os.replace``-s it onto the final name, so ``filename`` always holds a complete checkpoint (a
    process killed mid-write leaves only a ``tmp*`` file, which is never read). Only rank 0 writes.

    With ``resume=True`` every rank loads ``save_dir/filename`` when the trainer starts (the trainer continues
    with the epoch after the saved one; the configured ``max_epochs`` is kept, so it can be raised to train
    longer); if the file does not exist yet, training starts from scratch, so the same command can be used for
    the first start and every restart.

    The trainer is added at ``attach`` time (a config handler cannot reference the trainer it belongs to). Give
    ``evaluator`` (and ``evaluator_handlers``) to also restore the best validation metric and the ranking of
    key-metric :class:`~monai.handlers.CheckpointSaver` handlers, so ``model.pt`` is not replaced by a worse
    model after a resume.

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict`` (network, optimizer, LR scheduler ...); DDP
            and DataParallel networks are saved unwrapped. ``None`` values are skipped.
        filename: checkpoint file name in ``save_dir``.
        save_interval: epochs between checkpoints; ``0`` saves only when training completes.
        resume: load ``save_dir/filename`` (if present) at the start of training.
        evaluator: the validation engine whose best metric is saved and restored.
        evaluator_handlers: the validation handlers; key-metric ``CheckpointSaver``-s among them are saved and
            restored.
        trainer_key: key of the trainer state in the checkpoint.
        strict: passed to ``load_state_dict`` of the networks.
        strict_shape: as :class:`monai.handlers.CheckpointLoader` (``False`` loads only matching network
            weights and skips the other objects).
        map_location: ``torch.load`` map location.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        save_interval: int = 1,
        resume: bool = False,
        evaluator: Engine | None = None,
        evaluator_handlers: Sequence[Any] | None = None,
        trainer_key: str = "trainer",
        strict: bool = True,
        strict_shape: bool = True,
        map_location: Any = "cpu",
    ) -> None:
        if save_interval < 0:
            raise ValueError(f"save_interval must be >= 0, got {save_interval}.")
        self.save_dir = Path(save_dir)
        self.filename = filename
        self.save_interval = save_interval
        self.resume = bool(resume)
        self.trainer_key = trainer_key
        self.strict = strict
        self.strict_shape = strict_shape
        self.map_location = map_location
        self.objects: dict[str, Any] = {k: v for k, v in save_dict.items() if v is not None}
        if evaluator is not None:
            self.objects["evaluator_best"] = _BestMetricState(evaluator)
        savers = [h for h in evaluator_handlers or () if isinstance(h, CheckpointSaver)]
        for i, saver in enumerate(s for s in savers if s._key_metric_checkpoint is not None):
            self.objects[f"key_metric_saver_{i}"] = _KeyMetricSaverState(saver)
        self._last_saved_iteration: int | None = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        self.objects[self.trainer_key] = engine
        self.objects[f"{self.trainer_key}_best"] = _BestMetricState(engine)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def state_dict(self) -> dict[str, Any]:
        return {k: _unwrap(obj).state_dict() for k, obj in self.objects.items()}

    def save(self, engine: Engine) -> None:
        if not _is_rank0() or self._last_saved_iteration == engine.state.iteration:
            return
        # tmp file in save_dir + os.replace (ignite 0.5 DiskSaver._save_func); in a process group, ignite's rank
        # lookup must have been synced on all ranks first (monai_probunet.engines.init_distributed does it)
        saver = DiskSaver(str(self.save_dir), atomic=True, create_dir=True, require_empty=False)
        saver(self.state_dict(), self.filename)
        self._last_saved_iteration = engine.state.iteration
        logger.info(f"Saved {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}.")

    def load(self, engine: Engine) -> None:
        if not self.path.is_file():
            logger.info(f"resume: no checkpoint at {self.path} yet; training starts from scratch.")
            return
        loader = CheckpointLoader(
            load_path=str(self.path),
            load_dict=dict(self.objects),
            strict=self.strict,
            strict_shape=self.strict_shape,
            map_location=self.map_location,
        )
        loader(engine)
        self._last_saved_iteration = engine.state.iteration
        logger.info(
            f"Resumed from {self.path}: resuming from iteration {engine.state.iteration}, epoch "
            f"{engine.state.epoch} until {engine.state.max_epochs} epochs."
        )
