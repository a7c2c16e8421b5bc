"""Locating the bundle folder from the command line, so checkpoints land in ``bundle/models`` from any cwd."""

from __future__ import annotations

import ast
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bundle_root"]


def _config_files_from_argv(argv: Sequence[str]) -> list[str]:
    for i, arg in enumerate(argv):
        value = None
        if arg == "--config_file" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--config_file="):
            value = arg.split("=", 1)[1]
        if value is None:
            continue
        if value.strip().startswith("["):
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                return []
            return [str(v) for v in parsed] if isinstance(parsed, (list, tuple)) else []
        return [value]
    return []


def bundle_root(argv: Sequence[str] | None = None) -> str:
    """The bundle folder: the parent of the ``configs/`` folder holding the first ``--config_file``.

    ``python -m monai.bundle run ... --config_file X`` does not tell the config where it lives (model-zoo bundles
    use ``bundle_root: "."``, i.e. the working directory); this reads ``--config_file`` from ``sys.argv``.
    Falls back to this repository's ``bundle/`` folder, then to the working directory. An explicit
    ``--bundle_root`` on the command line overrides the config value anyway.
    """
    files = _config_files_from_argv(sys.argv if argv is None else argv)
    if files:
        parent = Path(files[0]).expanduser().resolve().parent
        return str(parent.parent if parent.name == "configs" else parent)
    repo_bundle = Path(__file__).resolve().parents[1] / "bundle"
    if (repo_bundle / "configs").is_dir():
        return str(repo_bundle)
    return str(Path.cwd())
