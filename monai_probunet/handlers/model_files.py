"""The files a training run publishes for later steps, written atomically: MONAI's best-metric / final checkpoint
saver whose files are replaced (never removed first), and ``model.pt`` with the best validation epoch's weights,
written only when the run has run all its epochs."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from ..bundle_utils import as_bool
from ..io_utils import atomic_torch_save
from ..model_loading import write_model_settings

__all__ = ["AtomicCheckpointSaver", "FinalModel"]

logger = logging.getLogger(__name__)


def _is_rank0() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        return obj.module
    return obj


class _ReplacingDiskSaver(DiskSaver):
    """A :class:`~ignite.handlers.DiskSaver` that never leaves a checkpoint name without a complete file.

    The new file is written to a temporary file in the same folder and ``os.replace``-d onto its name
    (:func:`monai_probunet.io_utils.atomic_torch_save`); ignite's :class:`~ignite.handlers.Checkpoint` asks to
    remove the file being superseded *before* saving, so removals are deferred until the new file is in place,
    and a removal of the name just written is dropped (``os.replace`` already replaced it).

    Args:
        dirname: checkpoint folder.
        filename: a fixed file name for every save (as MONAI's saver: ``model.pt``, ``checkpoint_final.pt``), or
            ``None`` for ignite's generated names.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), atomic=True, create_dir=True, require_empty=False)
        self.filename = filename
        self._pending_removals: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        if idist.get_rank() != self.save_on_rank:
            return
        atomic_torch_save(checkpoint, self.dirname / filename)
        pending, self._pending_removals = self._pending_removals, []
        for old in pending:
            if old != filename:
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        self._pending_removals.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's :class:`~monai.handlers.CheckpointSaver` with every file replaced atomically.

    MONAI's saver deletes the previous ``model.pt`` (best key metric) or ``checkpoint_final.pt`` and then writes
    the new one in place, so a crash, a kill or a full disk in between loses both. Here each file is written to a
    temporary file in the same folder and moved onto its name; the previous file stays complete and loadable
    until then, and files of other names (``key_metric_n_saved > 1``) are removed only after the new one is in
    place. Same arguments as :class:`~monai.handlers.CheckpointSaver`.
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = _ReplacingDiskSaver(self.save_dir, filename=fixed)


class FinalModel:
    """Write the network's weights to ``save_dir/filename`` once training has run all its epochs.

    Unlike a ``save_final`` :class:`~monai.handlers.CheckpointSaver`, nothing is written when the run stops early
    (an exception, Ctrl-C, a terminate): the file keeps the previous complete run's model, replaced atomically
    only by the next one. The file holds the state dict of the (unwrapped) network, as ``model.pt`` of a
    key-metric saver does, so the same loaders read it.

    Files a run writes under a working name while it runs (the best validation epoch's weights) are published
    under their final names at the same moment: the folder then holds one complete run's files, and a run that
    stops early or never validates leaves none of its own beside the previous run's.

    Args:
        save_dir: output folder.
        network: the trained network (DDP and DataParallel are unwrapped).
        filename: file name in ``save_dir``.
        publish: ``{working name: final name}`` in ``save_dir``: each working file is moved onto its final name;
            a final name this run wrote no working file for (it never validated) is removed, being the previous
            run's.
        resume: whether the run continues an interrupted one (whose working files it keeps); a fresh run removes
            working files an abandoned run left, so that it never publishes them as its own. A run resumed from
            a completed run's checkpoint without more epochs (``state.resumed_completed_run``, set by
            :class:`~monai_probunet.handlers.LastCheckpoint`) trains nothing and leaves every file as it is.
        settings: written as ``model.json`` beside the file (:func:`~monai_probunet.model_loading.write_model_settings`:
            the grid the model was trained on and its data, :func:`~monai_probunet.model_folder.trained_settings`).
    """

    def __init__(
        self,
        save_dir: str | Path,
        network: torch.nn.Module,
        filename: str = "model.pt",
        publish: Mapping[str, str] | None = None,
        resume: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(save_dir) / filename
        self.network = network
        self.publish = dict(publish or {})
        self.resume = as_bool(resume, "resume")
        self.settings = settings

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._drop_abandoned)
        engine.add_event_handler(Events.COMPLETED, self)

    def _drop_abandoned(self, engine: Engine) -> None:
        if self.resume or not _is_rank0():
            return
        for working in self.publish:
            stale = self.path.parent / working
            if stale.is_file():
                stale.unlink()
                logger.info("%s removed: an interrupted earlier run's, not resumed", stale)

    def __call__(self, engine: Engine) -> None:
        state = engine.state
        max_epochs = state.max_epochs or 0
        if not _is_rank0() or state.epoch < max_epochs or state.iteration < (state.epoch_length or 0) * max_epochs:
            return
        if getattr(state, "resumed_completed_run", False):  # its model files are this run's, kept as they are
            logger.info("%s: the resumed run had completed its %d epochs; nothing trained, its files kept (raise "
                        "--max_epochs to train on)", self.path.parent, max_epochs)
            return
        replaced = " (replacing the previous run's)" if self.path.is_file() else ""
        atomic_torch_save(_unwrap(self.network).state_dict(), self.path)
        if self.settings is not None:
            write_model_settings(self.path, self.settings)
        logger.info("final model (epoch %d) written to %s%s", state.epoch, self.path, replaced)
        for working, final in self.publish.items():
            src, dst = self.path.parent / working, self.path.parent / final
            if src.is_file():
                os.replace(src, dst)
                logger.info("%s: the best validation epoch of this run", dst)
            elif dst.is_file():
                dst.unlink()
                logger.info("%s removed: it was an earlier run's (this run never validated)", dst)
