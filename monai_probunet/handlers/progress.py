"""Training progress that stays readable in a log file, and the expected time per epoch."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["TrainingProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"2 min 09 s"`` or ``"1 h 05 min"``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class TrainingProgress:
    """Progress of a training run, readable on a terminal and in a file.

    - On a terminal (``sys.stderr`` is a tty) an ignite :class:`~ignite.contrib.handlers.ProgressBar` (tqdm) is
      attached; otherwise one log line every ``interval_s`` seconds (epoch, iteration, seconds per iteration, the
      time left in the epoch, the loss terms), never a carriage-return line that grows without end.
    - After ``estimate_after`` iterations (the first one, which includes warm-up, is not counted) one log line
      gives the seconds per iteration, the expected time per epoch and for the remaining epochs (training only:
      validation adds to it).
    - Off a terminal, every epoch ends with a line giving its duration (with the validation handlers attached before
      this one) and the time left at the run's pace so far.

    The loss terms on these lines are those of the last iteration (``last iteration: loss ...``), not the epoch's
    means: those are on MONAI's ``Epoch[n] Metrics -- train_loss: ...`` line where the trainer has the metrics.

    Args:
        interval_s: seconds between progress lines when the output is not a terminal.
        estimate_after: timed iterations behind the time-per-epoch estimate.
        output_transform: maps ``engine.state.output`` to a ``{name: float}`` dict shown on each line as the last
            iteration's values (e.g. :func:`monai_probunet.engines.loss_terms`); ``None`` shows none.
        tty: force the terminal (``True``) or the log-line (``False``) form; ``None`` asks ``sys.stderr.isatty()``.
        name: logger name; ``None`` uses the engine's logger (as MONAI's ``StatsHandler`` does).
    """

    def __init__(
        self,
        interval_s: float = 30.0,
        estimate_after: int = 5,
        output_transform: Callable[[Any], dict[str, float]] | None = None,
        tty: bool | None = None,
        name: str | None = None,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}.")
        if estimate_after < 1:
            raise ValueError(f"estimate_after must be >= 1, got {estimate_after}.")
        self.interval_s = float(interval_s)
        self.estimate_after = int(estimate_after)
        self.output_transform = output_transform
        self.tty = tty
        self.name = name
        self.logger = logging.getLogger(name) if name is not None else None

    def attach(self, engine: Engine) -> None:
        if self.logger is None:
            self.logger = engine.logger
        tty = self.tty if self.tty is not None else _isatty(sys.stderr)
        if tty:
            from ignite.handlers import ProgressBar

            ProgressBar(persist=False).attach(engine)
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed, tty)
        if not tty:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine: Engine) -> None:
        self._run_start = time.perf_counter()
        self._run_start_epoch: int | None = None  # at the first epoch: a resume restores the epoch after STARTED
        self._estimate_start: float | None = None
        self._estimate_from = 0
        self._estimated = False

    def _epoch_started(self, engine: Engine) -> None:
        now = time.perf_counter()
        if self._run_start_epoch is None:
            self._run_start_epoch = engine.state.epoch - 1
        self._epoch_start = self._last_line = now
        self._last_line_iteration = 0

    def _iteration_completed(self, engine: Engine, tty: bool) -> None:
        now = time.perf_counter()
        epoch_length = engine.state.epoch_length or 0
        it = (engine.state.iteration - 1) % epoch_length + 1 if epoch_length else engine.state.iteration
        if not self._estimated:
            if self._estimate_start is None:
                self._estimate_start, self._estimate_from = now, engine.state.iteration
            elif engine.state.iteration - self._estimate_from >= self.estimate_after:
                timed = engine.state.iteration - self._estimate_from
                self._log_estimate(engine, (now - self._estimate_start) / timed)
        if tty or now - self._last_line < self.interval_s:
            return
        per_it = (now - self._last_line) / max(1, it - self._last_line_iteration)
        self._last_line, self._last_line_iteration = now, it
        line = f"epoch {engine.state.epoch}/{engine.state.max_epochs} iteration {it}/{epoch_length or '?'}"
        if epoch_length:
            line += f" ({100 * it / epoch_length:.0f} %), {per_it:.2f} s/it"
            if it < epoch_length:
                line += f", epoch done in about {format_duration(per_it * (epoch_length - it))}"
        else:
            line += f", {per_it:.2f} s/it"
        line += self._terms(engine)
        self.logger.info(line)

    def _epoch_completed(self, engine: Engine) -> None:
        now = time.perf_counter()
        done = engine.state.epoch - self._run_start_epoch
        left = (engine.state.max_epochs or engine.state.epoch) - engine.state.epoch
        line = f"epoch {engine.state.epoch}/{engine.state.max_epochs} took "
        line += format_duration(now - self._epoch_start)
        if left > 0 and done > 0:
            line += f", about {format_duration((now - self._run_start) / done * left)} left at this pace"
        self.logger.info(line + self._terms(engine))

    def _log_estimate(self, engine: Engine, per_it: float) -> None:
        self._estimated = True
        epoch_length = engine.state.epoch_length
        if not epoch_length:
            self.logger.info(f"about {per_it:.2f} s per training iteration")
            return
        epochs_left = (engine.state.max_epochs or engine.state.epoch) - engine.state.epoch + 1
        self.logger.info(
            f"about {per_it:.2f} s per training iteration: an epoch ({epoch_length} iterations) takes about "
            f"{format_duration(per_it * epoch_length)}, the {epochs_left} epoch(s) to go about "
            f"{format_duration(per_it * epoch_length * epochs_left)} (validation not included)"
        )

    def _terms(self, engine: Engine) -> str:
        if self.output_transform is None or engine.state.output is None:
            return ""
        try:
            terms = self.output_transform(engine.state.output)
        except (KeyError, TypeError, IndexError):
            return ""
        if not terms:
            return ""
        return "; last iteration: " + ", ".join(f"{k} {float(v):.4g}" for k, v in terms.items())


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
