"""One-line errors for the benchmark scripts: a bad option or input file is reported as one line ``error: ...``
(naming the option or file and what was expected) with exit status 2, never a traceback; Ctrl-C is one line with exit
status 130; a bug keeps its traceback.

A script parses its options with :class:`ArgumentParser`, raises :class:`ScriptInputError` (or lets the package's
own user errors, e.g. :class:`~monai_probunet.data.DatasetError`, pass) and ends with::

    if __name__ == "__main__":
        run_main(main)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from monai_probunet.bundle_utils import EXIT_INTERRUPTED, EXIT_USAGE, UserInputError, positive_int

__all__ = ["ArgumentParser", "ScriptInputError", "positive_int", "run_main"]



class ScriptInputError(UserInputError, ValueError):
    """An option or input file of a benchmark script that cannot be used as given; the message names it and what
    was expected."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``prog: error: ... (see --help)``, exit status 2) instead of the
    usage text and the error."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def run_main(main: Callable[[], int | None]) -> NoReturn:
    """Exit with ``main()``'s status (``None``: 0); a :class:`~monai_probunet.bundle_utils.UserInputError` it raises
    is printed as one line ``error: <message>`` on stderr and exits with status 2, Ctrl-C as one line with status
    130."""
    try:
        status = main()
    except UserInputError as e:
        sys.stdout.flush()
        print(f"error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        sys.stdout.flush()
        print("interrupted by Ctrl-C.", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(status or 0)
