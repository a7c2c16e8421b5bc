"""The "last" checkpoint for resuming, written atomically (network, optimizer, LR scheduler, trainer state, random
generators; Ctrl-C stops at a resumable point), and what a fresh run or a resume refuses."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver

from ..bundle_utils import ConfigValueError, InputFileError, as_bool
from ..engines.precision import check_channels_last
from ..engines.rng_state import TrainingRNGState
from ..io_utils import atomic_torch_save
from .model_files import AtomicCheckpointSaver, FinalModel, _is_rank0, _unwrap  # the first two: their old path

__all__ = ["AtomicCheckpointSaver", "FinalModel", "LastCheckpoint"]

logger = logging.getLogger(__name__)


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


class _DataIdentity:
    """The SHA-256 of the run's ``datalist.json`` (its cases and splits) as a state-dict object: a resume checks it
    against the command's before loading anything (:meth:`LastCheckpoint.load`)."""

    def __init__(self, datalist: str | os.PathLike) -> None:
        self.sha256 = hashlib.sha256(Path(datalist).read_bytes()).hexdigest()

    def state_dict(self) -> dict[str, str]:
        return {"datalist_sha256": self.sha256}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass  # compared in LastCheckpoint.load, before the other objects are loaded


class _PrecisionState:
    """The precision and memory format a :class:`~monai_probunet.engines.ProbUNetTrainer` computes in, as a
    state-dict object.

    On a CPU ``precision: auto`` and ``channels_last: auto`` are timings, taken anew by every process; a resumed run
    keeps the choices of the run it continues, so it stays identical to an uninterrupted one. An explicit setting that
    differs is kept, with a warning.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict[str, Any]:
        channels_last = bool(getattr(self.engine, "channels_last", False))
        return {"precision": str(self.engine.precision), "channels_last": channels_last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved, current = state["precision"], self.engine.precision
        if saved != current and getattr(self.engine, "precision_requested", None) == "auto":
            self.engine.precision = saved
            logger.info(f"resume: precision {saved}, as the run it continues (auto measured {current} this time).")
        elif saved != current:
            logger.warning(
                f"resume: precision {current} as configured, but the run it continues computed in {saved}: the "
                "resumed run differs from an uninterrupted one."
            )
        saved, current = state.get("channels_last"), bool(getattr(self.engine, "channels_last", False))
        if saved is None or saved == current:
            return
        layout = "channels-last" if saved else "channels-first"
        if check_channels_last(getattr(self.engine, "channels_last_requested", False)) == "auto":
            self.engine.set_channels_last(saved)
            logger.info(f"resume: memory format {layout}, as the run it continues (auto measured the other this time).")
        else:
            logger.warning(
                f"resume: memory format {'channels-first' if saved else 'channels-last'} as configured, but the run "
                f"it continues computed {layout}: the resumed run differs from an uninterrupted one."
            )


def _initial_lrs(optimizer: Any) -> list[float]:
    """The learning rate each parameter group starts from (``initial_lr``, set by an LR scheduler; else ``lr``)."""
    groups = getattr(optimizer, "param_groups", None) or []
    return [float(g.get("initial_lr", g.get("lr", 0.0))) for g in groups]


def _resume_advice(path: Path) -> str:
    return f"move {path} away to start over, or give the --ckpt_dir of the run to resume"


def _read_checkpoint(path: Path) -> Mapping[str, Any]:
    """The checkpoint in ``path``, memory-mapped (an entry is read when it is used).

    Raises:
        InputFileError: the file is not a readable checkpoint (one line from the bundle command).
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 -- empty, truncated, corrupt or unsafe pickles raise many types
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise InputFileError(f"--resume: {path} is not a readable checkpoint ({type(e).__name__}: {first}); "
                             f"{_resume_advice(path)}.") from e


class _Progress(NamedTuple):
    epoch: int
    max_epochs: int
    epoch_length: int

    @property
    def completed(self) -> bool:
        return self.epoch >= self.max_epochs


def _progress(state: Any) -> _Progress | None:
    """How far the run whose trainer state this is got (its last completed epoch); ``None`` for another layout."""
    try:
        length, max_epochs = int(state["epoch_length"]), int(state["max_epochs"])
        iteration = int(state["iteration"]) if "iteration" in state else int(state["epoch"]) * length
    except (KeyError, TypeError, ValueError):
        return None
    return _Progress(iteration // length, max_epochs, length)


class LastCheckpoint:
    """Save and restore everything needed to continue an interrupted training run.

    Every ``save_interval`` epochs (and when training completes) the state dicts of ``save_dict`` plus the
    trainer's own state (iteration, epoch) go to ``save_dir/filename``, replacing the previous file atomically
    (serialized in a temporary folder beside it, then ``os.replace``-d onto the final name), so
    ``filename`` always holds a complete checkpoint (a process killed mid-write leaves only a ``.*.tmp`` folder,
    which is never read). Only rank 0 writes.

    Without ``resume`` a ``save_dir/filename`` of a run that has not completed is refused
    (:meth:`check_fresh_start`). With ``resume=True`` every rank loads ``save_dir/filename`` when the trainer starts
    (the trainer continues with the epoch after the saved one; the configured ``max_epochs`` is kept, so it can be
    raised to train longer); if the file does not exist yet, training starts from scratch, so the same command can
    be used for the first start and every restart. The checkpoint also holds the state of every random generator
    training draws from (:class:`~monai_probunet.engines.rng_state.TrainingRNGState`) and the trainer's precision
    (kept on resume where ``precision: auto`` would measure again), so on the same device a resumed run is identical
    to an uninterrupted one.

    Ctrl-C (SIGINT, in the main thread) stops training after the current iteration (and a running validation
    after its current batch) instead of raising in the middle of a step: nothing more is saved, so ``filename``
    keeps the last completed epoch it was written for, and :class:`~monai_probunet.engines.ProbUNetTrainer`
    then raises :class:`~monai_probunet.bundle_utils.TrainingInterrupted` saying how to resume (the bundle
    command prints it as one line and exits with status 130). A second Ctrl-C interrupts at once.

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
        datalist: the run's ``datalist.json``: its SHA-256 is saved, and a resume whose datalist differs (other
            data, or an edited file) is refused.
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
        datalist: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(save_interval, bool) or not isinstance(save_interval, int) or save_interval < 0:
            raise ConfigValueError(
                "checkpoint interval (save_interval) must be an integer >= 0 (0: only at the end), got "
                f"{save_interval!r}."
            )
        self.save_dir = Path(save_dir)
        probe = self.save_dir
        while not probe.exists() and probe != probe.parent:  # the folder, or its first existing ancestor
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            what = "is a file, not a folder" if probe == self.save_dir else f"cannot be created in {probe}"
            raise ConfigValueError(f"--ckpt_dir {self.save_dir} {what} (checkpoints are written there).")
        self.filename = filename
        self.save_interval = save_interval
        self.resume = as_bool(resume, "resume")
        if not self.resume:
            self.check_fresh_start(self.save_dir, filename, trainer_key)
        #: called with the exception that stops training, before it is passed on (e.g. to end an MLflow run)
        self.on_error: list[Callable[[BaseException], None]] = []
        self.trainer_key = trainer_key
        self.strict = strict
        self.strict_shape = strict_shape
        self.map_location = map_location
        self.objects: dict[str, Any] = {k: v for k, v in save_dict.items() if v is not None}
        if datalist is not None:
            self.objects["data"] = _DataIdentity(datalist)
        if evaluator is not None:
            self.objects["evaluator_best"] = _BestMetricState(evaluator)
        savers = [h for h in evaluator_handlers or () if isinstance(h, CheckpointSaver)]
        for i, saver in enumerate(s for s in savers if s._key_metric_checkpoint is not None):
            self.objects[f"key_metric_saver_{i}"] = _KeyMetricSaverState(saver)
        self.evaluator = evaluator
        self._last_saved_iteration: int | None = None
        self._last_saved_epoch: int | None = None
        self._interrupted_at: int | None = None
        self._previous_sigint: Any = None

    @property
    def path(self) -> Path:
        return self.save_dir / self.filename

    def attach(self, engine: Engine) -> None:
        self.objects[self.trainer_key] = engine
        self.objects[f"{self.trainer_key}_best"] = _BestMetricState(engine)
        self.objects["rng"] = TrainingRNGState(engine)
        if hasattr(engine, "precision"):
            self.objects["precision"] = _PrecisionState(engine)
        engine.add_event_handler(Events.STARTED, self._install_sigint, engine)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        if self.save_interval > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)
        for event in (Events.COMPLETED, Events.TERMINATE):
            engine.add_event_handler(event, self._restore_sigint)
        hooks = getattr(engine, "on_error", None)  # a ProbUNetTrainer's: called before any EXCEPTION_RAISED handler
        if isinstance(hooks, list):
            hooks.append(lambda e: self._stop_on_error(engine, e))
        else:
            engine.add_event_handler(Events.EXCEPTION_RAISED, self._reraise)
        engine.add_event_handler(Events.TERMINATE, self._report_interrupt)

    def _install_sigint(self, engine: Engine) -> None:
        self._interrupted_at = None
        engine.state.interrupted = None
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigint(signum: int, frame: Any) -> None:
            # first Ctrl-C: stop at the end of the current step; a second one interrupts at once
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._interrupted_at = engine.state.epoch
            logger.warning("Ctrl-C: stopping after the current step (press again to abort at once).")
            if self.evaluator is not None:
                self.evaluator.terminate(skip_completed=True)
            engine.terminate(skip_completed=True)

        self._previous_sigint = signal.signal(signal.SIGINT, on_sigint)

    def _restore_sigint(self, engine: Engine, *args: Any) -> None:
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def _stop_on_error(self, engine: Engine, e: BaseException) -> None:
        self._restore_sigint(engine)
        for hook in self.on_error:
            hook(e)

    def _reraise(self, engine: Engine, e: BaseException) -> None:
        # ignite swallows an exception when an EXCEPTION_RAISED handler returns: restore Ctrl-C and pass it on
        self._stop_on_error(engine, e)  # ignite calls no EXCEPTION_RAISED handler after this one
        raise e

    def _report_interrupt(self, engine: Engine) -> None:
        if self._interrupted_at is None:
            return
        if self._last_saved_epoch is not None:
            where = (
                f"{self.path} holds epoch {self._last_saved_epoch}: continue with the same command and --resume true"
            )
        else:
            where = f"no checkpoint was written yet ({self.path}): run the same command again to start over"
        engine.state.interrupted = f"training interrupted by Ctrl-C in epoch {self._interrupted_at}; {where}."
        logger.warning(engine.state.interrupted)

    def state_dict(self) -> dict[str, Any]:
        return {k: _unwrap(obj).state_dict() for k, obj in self.objects.items()}

    def save(self, engine: Engine) -> None:
        if self._interrupted_at is not None:  # an interrupted epoch (or its validation) is not a resume point
            return
        if self._last_saved_iteration == engine.state.iteration:
            return
        if _is_rank0():  # rank 0 writes the file every rank resumes from; every rank knows which epoch it holds
            atomic_torch_save(self.state_dict(), self.path)  # a temporary folder beside it + os.replace
        self._last_saved_iteration = engine.state.iteration
        self._last_saved_epoch = engine.state.epoch
        if not _is_rank0():
            return
        logger.info(f"Saved {self.path} at epoch {engine.state.epoch}, iteration {engine.state.iteration}.")

    @property
    def _advice(self) -> str:
        return _resume_advice(self.path)

    @staticmethod
    def check_resumable(save_dir: str | Path, resume: Any, filename: str = "checkpoint_last.pt") -> set[str]:
        """With ``resume``, the keys of ``save_dir/filename`` (none without the file); called by the bundle's
        ``initialize`` so that an unreadable checkpoint is refused before any data is prepared.

        Raises:
            InputFileError: the file is not a readable checkpoint (one line from the bundle command).
        """
        path = Path(save_dir) / filename
        if not as_bool(resume, "resume") or not path.is_file():
            return set()
        return set(_read_checkpoint(path))

    @staticmethod
    def check_fresh_start(
        save_dir: str | Path, filename: str = "checkpoint_last.pt", trainer_key: str = "trainer"
    ) -> None:
        """Refuse a fresh run (without ``resume``) where ``save_dir/filename`` holds a run that has not completed
        (its trainer's iteration below ``max_epochs`` epochs): the fresh run would replace it at its first
        checkpoint, and a forgotten ``--resume true`` would lose that run's progress. A completed run's file, or
        one that cannot be read, is replaced as before.

        Raises:
            InputFileError: the file holds an unfinished run (one line from the bundle command).
        """
        path = Path(save_dir) / filename
        try:
            saved = _progress(_read_checkpoint(path)[trainer_key]) if path.is_file() else None
        except (InputFileError, KeyError):  # unreadable, or no trainer state: nothing to keep a fresh run from
            saved = None
        if saved is not None and not saved.completed:
            raise InputFileError(
                f"{path} holds an unfinished run (epoch {saved.epoch} of {saved.max_epochs}) that a fresh run would "
                f"replace: continue it with --resume true, or move {path} away (or give another --ckpt_dir) to "
                "start over."
            )

    def load(self, engine: Engine) -> None:
        if not self.path.is_file():
            logger.info(f"resume: no checkpoint at {self.path} yet; training starts from scratch.")
            return
        checkpoint = _read_checkpoint(self.path)
        saved_keys = set(checkpoint)
        data = self.objects.get("data")
        if isinstance(data, _DataIdentity) and "data" in saved_keys:
            saved_sha = checkpoint["data"].get("datalist_sha256")
            if saved_sha != data.sha256:
                raise InputFileError(
                    f"--resume: {self.path} holds a run of another datalist.json (SHA-256 {str(saved_sha)[:12]}..., "
                    f"this command's {data.sha256[:12]}...: other data, or an edited datalist): resume with the "
                    f"run's own data, or {self._advice}."
                )
        saved = _progress(checkpoint.get(self.trainer_key))
        length = engine.state.epoch_length  # this command's iterations per epoch (its data and batch size)
        if saved is not None and length is not None and saved.epoch_length != length:
            raise InputFileError(
                f"--resume: {self.path} holds a run of {saved.epoch_length} iterations per epoch, and this command's "
                f"data, --batch_size and processes give {length}: resume with the run's own, or {self._advice}."
            )
        if saved is not None and engine.state.max_epochs is not None and saved.epoch > engine.state.max_epochs:
            raise InputFileError(
                f"--resume: {self.path} holds epoch {saved.epoch} of its run, past this command's --max_epochs "
                f"{engine.state.max_epochs}: give --max_epochs {max(saved.epoch, saved.max_epochs)} (the run's own) "
                f"to continue it, or {self._advice}."
            )
        objects = {k: v for k, v in self.objects.items() if k != "data" or k in saved_keys}  # older checkpoints
        if "rng" not in saved_keys:
            del objects["rng"]
            logger.warning(
                f"{self.path} holds no random generator states (written by an older version): the "
                "resumed run draws other random numbers than an uninterrupted one would."
            )
        objects = {k: v for k, v in objects.items() if k != "precision" or k in saved_keys}  # older checkpoints
        loader = CheckpointLoader(
            load_path=str(self.path),
            load_dict=objects,
            strict=self.strict,
            strict_shape=self.strict_shape,
            map_location=self.map_location,
        )
        configured = _initial_lrs(self.objects.get("optimizer"))
        try:
            loader(engine)
        except (KeyError, RuntimeError, ValueError) as e:
            detail = " ".join(str(e).split())[:300]
            raise InputFileError(f"--resume: {self.path} does not fit this run (another network, optimizer or "
                                 f"settings: {detail}); {self._advice}.") from e
        self._last_saved_iteration = engine.state.iteration
        self._last_saved_epoch = engine.state.epoch
        # a completed run resumed without more epochs: nothing trains, and FinalModel keeps its published files
        engine.state.resumed_completed_run = bool(
            saved and saved.completed and saved.epoch >= (engine.state.max_epochs or 0)
        )
        logger.info(
            f"Resumed from {self.path}: resuming from iteration {engine.state.iteration}, epoch "
            f"{engine.state.epoch} until {engine.state.max_epochs} epochs; its optimizer, learning-rate schedule and "
            "random generators continue the saved run's (this command's --seed does not apply to them)."
        )
        saved = _initial_lrs(self.objects.get("optimizer"))
        if configured and saved and configured != saved:
            logger.warning(
                f"resume: this command's learning rate {configured[0]:g} is not the run's it continues "
                f"({saved[0]:g}): the saved optimizer and schedule go on with {saved[0]:g}; train with "
                f"{configured[0]:g} from scratch in another --ckpt_dir."
            )
