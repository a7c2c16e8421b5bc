"""Progress of a dataset generation loop over scans: a tqdm bar on a terminal, timed log lines otherwise."""

from __future__ import annotations

import logging
import time

__all__ = ["ScanProgress"]

logger = logging.getLogger(__name__)


class ScanProgress:
    """Progress of a generation loop: a tqdm bar on a terminal, else one log line every ``interval_s`` seconds
    (and at the end, to ``log``: this module's logger by default), so a log file gets readable lines instead of one
    growing carriage-return line.

    Args:
        total: the number of items (``unit``) the loop goes through.
        desc: the name the bar and the lines start with.
        interval_s: seconds between two log lines where stderr is not a terminal.
        log: the logger of the lines.
        unit: what one item is called (a line says ``3/10 scans``).
        made: what :meth:`update`'s count is called (``120 images``).
        leave: keep the terminal's bar once closed.
    """

    def __init__(
        self, total: int, desc: str, interval_s: float = 10.0, log: logging.Logger | None = None, unit: str = "scan",
        made: str = "images",
        leave: bool = False,
    ) -> None:
        import sys

        self.total, self.desc, self.interval_s, self.unit, self.made = total, desc, interval_s, unit, made
        self.done, self.t0 = 0, time.time()
        self.last = self.t0
        self.bar = None
        self.log = logger if log is None else log
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave)

    def update(self, images: int) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({self.made: images}, refresh=False)
            return
        now = time.time()
        if now - self.last >= self.interval_s or self.done == self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            self.log.info(
                "%s: %d/%d %ss, %d %s, %.0f s elapsed, ~%.0f s left", self.desc, self.done, self.total, self.unit,
                images, self.made, now - self.t0, (self.total - self.done) / rate,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
