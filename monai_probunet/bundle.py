"""``python -m monai_probunet.bundle run ...``: MONAI's bundle command with its own options checked first.

``python -m monai.bundle run`` checks the options of the command itself (``--config_file``, ``--tracking``,
``--logging_file``, ``--meta_file``, ``--args_file``) before any code of a config runs, so a typo there (``--tracking
mlfow``, a config file's name) ends in MONAI's traceback, and Ctrl-C while MONAI is still being imported (several
seconds) prints the import's traceback. This command takes the same arguments: it installs the one-line error hook
(:func:`~monai_probunet.bundle_utils.install_cli_error_hook`) before importing anything heavy, refuses such an option
in one line (exit status 2), then runs MONAI's own ``monai.bundle`` command unchanged. Everything after that (an
option no config has, a value of the wrong kind, the run id) is checked by the configs themselves, under either
command. The export commands (``onnx_export``, ``ckpt_export``, ``verify_net_in_out``) are checked and write their
file whole (:mod:`~monai_probunet.bundle_export`), and ``verify_metadata`` is one line offline
(:mod:`~monai_probunet.bundle_metadata`).

    python -m monai_probunet.bundle run training --config_file bundle/configs/train.yaml --tracking mlflow
"""

from __future__ import annotations

import difflib
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

from .bundle_export import check_export_options, run_export
from .bundle_metadata import check_verify_metadata, run_verify_metadata
from .bundle_options import CONFIG_SUFFIXES, check_files, command_options, missing_file
from .bundle_utils import ConfigValueError, install_cli_error_hook

__all__ = ["check_run_options", "main"]

#: the options of ``monai.bundle.run`` that name a file, read before any code of a config runs
FILE_OPTIONS = ("config_file", "meta_file", "logging_file", "args_file")


def check_run_options(argv: Sequence[str]) -> None:
    """Refuse, in one line, an option of ``monai.bundle run`` itself that MONAI would fail on with a traceback: a
    file option (``--config_file``, ``--meta_file``, ``--logging_file``, ``--args_file``) naming no file, and a
    ``--tracking`` that is neither one of MONAI's tracking settings (``mlflow``) nor a settings file.

    Args:
        argv: the arguments after the program; only a ``run`` command is checked.

    Raises:
        ConfigValueError: naming the option, the value and what is accepted.
    """
    positional, options = command_options(argv)
    if not positional or positional[0] != "run":
        return
    check_files(options, FILE_OPTIONS)
    if "tracking" in options:
        from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

        value, named = options["tracking"], sorted(DEFAULT_EXP_MGMT_SETTINGS)
        if value in named:
            return
        text = str(value)
        if Path(text).suffix.lower() in CONFIG_SUFFIXES:
            if not Path(text).is_file():
                raise missing_file("tracking", text)
            return
        close = difflib.get_close_matches(text, named, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigValueError(f"--tracking {text}: expected {' or '.join(named)}, or a tracking settings file "
                               f"({', '.join(CONFIG_SUFFIXES)}){hint}.")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    """Check the command's own options, then run ``python -m monai.bundle`` with the same arguments.

    Args:
        argv: the arguments after the program (default ``sys.argv[1:]``).
    """
    install_cli_error_hook()  # from here Ctrl-C is one line (exit 130), a user error one line (exit 2)
    argv = list(sys.argv[1:] if argv is None else argv)
    check_run_options(argv)
    target = check_export_options(argv)
    verify = check_verify_metadata(argv)
    if target is not None:
        run_export(argv, target, _run_monai_bundle)
    elif verify is not None:
        run_verify_metadata(argv, *verify, _run_monai_bundle)
    else:
        _run_monai_bundle(argv)


def _run_monai_bundle(argv: Sequence[str]) -> None:
    """``python -m monai.bundle`` with ``argv`` (its command line: fire parses ``sys.argv``)."""
    sys.argv = [sys.argv[0], *argv]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
