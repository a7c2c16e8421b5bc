"""``verify_metadata`` under ``python -m monai_probunet.bundle``: its options checked and its schema fetched first.

MONAI's ``python -m monai.bundle verify_metadata --meta_file M --filepath F`` downloads the JSON schema named by
the metadata's ``schema`` URL to ``F`` (or reads ``F`` when it is already there, skipping the download) and
validates the metadata against it. A missing ``--filepath``, a download that fails (offline) and a metadata file
that does not satisfy the schema all end in tracebacks there. Here each is one line (exit status 2): offline, put
a copy of the schema at ``--filepath`` and the check runs without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .bundle_options import check_files, command_options
from .bundle_utils import ConfigValueError

__all__ = ["check_verify_metadata", "run_verify_metadata"]


def check_verify_metadata(argv: Sequence[str]) -> tuple[Path, Path] | None:
    """Check the options of ``verify_metadata`` and make sure its schema file is there.

    Args:
        argv: the arguments after the program (``["verify_metadata", "--meta_file", ...]``).

    Returns:
        ``(meta_file, schema_file)`` for ``verify_metadata``, else ``None``.

    Raises:
        ConfigValueError: a missing option or file, metadata without ``schema``, or a schema that could not be
            downloaded (naming its URL and what to do offline).
    """
    from .io_utils import read_json

    positional, options = command_options(argv)
    if not positional or positional[0] != "verify_metadata":
        return None
    meta = options.get("meta_file")
    if meta is None or meta is True:
        raise ConfigValueError("verify_metadata needs --meta_file FILE (e.g. bundle/configs/metadata.json).")
    check_files(options, ("meta_file",))
    schema = options.get("filepath")
    if schema is None or schema is True:
        raise ConfigValueError("verify_metadata needs --filepath FILE: where the metadata's JSON schema is "
                               "downloaded to, or read from when it is already there (offline).")  # fmt: skip
    schema = Path(str(schema))
    try:
        url = read_json(meta).get("schema")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigValueError(f"--meta_file {meta}: not a JSON object ({e}).") from None
    if not isinstance(url, str) or not url:
        raise ConfigValueError(f"--meta_file {meta}: no \"schema\" URL to verify against.")
    if schema.is_dir():
        raise ConfigValueError(f"--filepath {schema}: is a folder; give the schema's file name.")
    if not schema.exists():
        from monai.apps.utils import download_url

        try:
            download_url(url=url, filepath=schema, progress=False)
        except Exception as e:  # noqa: BLE001 -- URLError, HTTPError, timeouts, a refused hash: the network
            reason = getattr(e, "reason", None) or e
            raise ConfigValueError(f"verify_metadata: the schema {url} could not be downloaded to {schema} "
                                   f"({reason}); offline, put a copy of it there and run again.") from None  # fmt: skip
    return Path(str(meta)), schema


def run_verify_metadata(
    argv: Sequence[str], meta: Path, schema: Path, run_monai: Callable[[list[str]], None]
) -> None:
    """Run MONAI's ``verify_metadata`` (its schema file in place); a metadata file the schema refuses is one line.

    Args:
        argv: the command's arguments (checked by :func:`check_verify_metadata`).
        meta: the metadata file (named in the error).
        schema: the schema file (named in the error).
        run_monai: runs ``python -m monai.bundle`` with the arguments it is given.

    Raises:
        ConfigValueError: the schema's complaint, naming the metadata file.
    """
    try:
        run_monai(list(argv))
    except ValueError as e:
        if "against schema" not in str(e):
            raise
        cause = e.__cause__  # jsonschema's ValidationError: where and what
        where = "/".join(str(p) for p in getattr(cause, "absolute_path", ())) or "the top level"
        what = getattr(cause, "message", None) or " ".join(str(e).split())
        raise ConfigValueError(f"--meta_file {meta}: {where}: {what} (schema {schema}).") from None
