"""A logging filter that keeps an engine's log free of the errors the command line prints itself."""

from __future__ import annotations

import logging
import sys

from ..bundle_utils import UserInputError

__all__ = ["QuietUserErrors", "quiet_user_errors"]


class QuietUserErrors(logging.Filter):
    """Drops an engine's log records of a :class:`~monai_probunet.bundle_utils.UserInputError` or a Ctrl-C (ignite's
    "Engine run is terminating due to exception" line, empty for a ``KeyboardInterrupt``): the command prints that
    error, or how the run was interrupted, as its one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not isinstance(error, (UserInputError, KeyboardInterrupt))


def quiet_user_errors(logger: logging.Logger) -> None:
    """Add :class:`QuietUserErrors` to ``logger`` (once: ignite has one logger per engine class)."""
    if not any(isinstance(f, QuietUserErrors) for f in logger.filters):
        logger.addFilter(QuietUserErrors())
