"""The command line of ``python -m monai_probunet.bundle``: its options as MONAI's command reads them, and the check
of the options that name files.

Only the standard library: the checks run before anything heavy is imported.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .bundle_utils import ConfigValueError

__all__ = ["CONFIG_SUFFIXES", "check_files", "command_options", "file_paths", "missing_file"]

#: the suffixes MONAI reads a config, metadata or tracking settings file from
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def command_options(argv: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """The positional arguments and the ``--key value`` / ``--key=value`` options of a bundle command line, values
    read as the command reads them (Python literals such as ``"['a.yaml', 'b.yaml']"``, else the text).

    Args:
        argv: the arguments after the program (``["run", "training", "--config_file", ...]``).
    """
    positional, options = [], {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            key, eq, text = token[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                text, i = argv[i + 1], i + 1
            options[key] = _literal(text) if (eq or text) else True
        else:
            positional.append(token)
        i += 1
    return positional, options


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def file_paths(value: Any) -> list[str]:
    """The file names of a file option: a list, or one name, or names separated by commas (as MONAI reads them)."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    value = str(value)
    return value.split(",") if "," in value and not Path(value).is_file() else [value]


def missing_file(option: str, path: str) -> ConfigValueError:
    """The error for a file option naming a file that is not there, with the closest file of its folder."""
    folder = Path(path).parent
    suffixes = CONFIG_SUFFIXES + (".conf",)
    known = sorted(str(p) for p in folder.glob("*") if p.suffix in suffixes) if folder.is_dir() else []
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigValueError(f"--{option} {path}: no such file{hint}.")


def check_files(options: Mapping[str, Any], names: Iterable[str]) -> None:
    """Refuse a file option of ``names`` that names a file that is not there (an option that is absent, ``False``
    or ``"false"`` is not checked).

    Raises:
        ConfigValueError: naming the option and the file.
    """
    for option in names:
        value = options.get(option)
        if value is None or value is False or str(value).lower() == "false":
            continue
        for path in file_paths(value):
            if not Path(path).is_file():
                raise missing_file(option, path)
