"""Bundle command-line helpers: the bundle folder, strict booleans, one-line user errors.

This module imports only the standard library, so configs can use it before their heavy imports.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "ConfigValueError",
    "InputFileError",
    "InputFileNotFoundError",
    "QuietUserErrors",
    "RUN_OPTIONS",
    "TrainingInterrupted",
    "UserInputError",
    "as_bool",
    "bundle_root",
    "check_options",
    "check_overrides",
    "check_tracking_uri",
    "folder_write_problem",
    "install_cli_error_hook",
    "is_window",
    "log_progress_to_stderr",
    "positive_int",
    "quiet_optional_decoder",
    "quiet_user_errors",
]

#: exit status of the bundle command for bad input (a config value, a dataset on disk), as argparse uses
EXIT_USAGE = 2
#: exit status of a run stopped by Ctrl-C (128 + SIGINT), as shells report it
EXIT_INTERRUPTED = 130


class UserInputError(Exception):
    """Marker base of errors caused by the user's input, not by a bug: the bundle command prints the message as
    one line and exits with status 2 (see :func:`install_cli_error_hook`). Concrete errors also derive from the
    built-in class a Python caller expects (``ValueError``, ``FileNotFoundError``)."""


class ConfigValueError(UserInputError, ValueError):
    """A bundle option with a value of the wrong kind (message names the key and what was expected)."""


class InputFileError(UserInputError, ValueError):
    """A file the user gave (a checkpoint, a config) that cannot be read or holds the wrong content."""


class InputFileNotFoundError(UserInputError, FileNotFoundError):
    """A file the user named (a checkpoint) that does not exist."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C after saving what can be resumed; the message says how to resume."""


#: MONAI's optional GPU DICOM decoder (nvImageCodec), absent on CPU machines: its logger, and the warning MONAI's
#: ``LoadImage`` gives whenever it sets up its readers or loads a compressed DICOM file; nothing a user can act on
OPTIONAL_DECODER_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
OPTIONAL_DECODER_WARNING = "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def positive_int(text: str) -> int:
    """``argparse`` type of an option that counts something (samples, rounds, pixels): an integer >= 1."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def is_window(value: Any) -> bool:
    """Whether ``value`` is an intensity window ``[low, high]``: two numbers, ``low < high`` (``hu_window``)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        return False
    return value[0] < value[1]


def as_bool(value: Any, key: str) -> bool:
    """A bundle option as a boolean, parsed strictly.

    The bundle command line passes ``--resume false`` as the string ``'false'`` (truthy in Python); this accepts
    booleans, the integers 0 and 1 and the strings true/false, 1/0, yes/no, y/n, on/off (any case).

    Args:
        value: the option's value.
        key: the option's name, for the error message.

    Raises:
        ConfigValueError: anything else, naming ``key`` and the value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise ConfigValueError(f"--{key}: expected a boolean (true/false, 1/0 or yes/no), got {value!r}.")


def check_options(
    booleans: Mapping[str, Any] | None = None,
    counts: Mapping[str, Any] | None = None,
    folders: Mapping[str, Any] | None = None,
    positive: Mapping[str, Any] | None = None,
    mappings: Mapping[str, Any] | None = None,
    choices: Mapping[str, tuple[Any, Sequence[Any]]] | None = None,
    conditions: Mapping[str, tuple[Any, bool, str]] | None = None,
) -> None:
    """Check bundle options of simple kinds at the start of a run, before any data is generated or loaded.

    Args:
        booleans: ``{key: value}`` of boolean options (:func:`as_bool`).
        counts: ``{key: value}`` of options that must be whole numbers >= 1 (epochs, batch size, samples).
        folders: ``{key: path}`` of folder options (checkpoints, outputs): each must be a folder or not exist
            yet, with no file in its path (whether it is writable is checked where it is written).
        positive: ``{key: value}`` of options that must be numbers > 0 (learning rate).
        mappings: ``{key: value}`` of options that must be dicts (keyword arguments such as ``dataset_kwargs``).
        choices: ``{key: (value, allowed)}`` of options that must be one of ``allowed`` (named settings such as
            ``prior_sampling``).
        conditions: ``{key: (value, ok, expected)}`` of options checked by an expression of the config (``ok``, e.g.
            one that depends on another option); ``expected`` says what a good value is.

    Raises:
        ConfigValueError: the first option of the wrong kind, naming its key.
    """
    for key, value in (booleans or {}).items():
        as_bool(value, key)
    for key, value in (counts or {}).items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigValueError(f"--{key}: expected a whole number >= 1, got {value!r}.")
    for key, value in (positive or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigValueError(f"--{key}: expected a number > 0, got {value!r}.")
    for key, value in (mappings or {}).items():
        if not isinstance(value, Mapping):
            raise ConfigValueError(f"--{key}: expected a dict such as \"{{'num_patients': 12}}\", got {value!r}.")
    for key, (value, allowed) in (choices or {}).items():
        if value not in tuple(allowed):
            raise ConfigValueError(f"--{key}: expected one of {', '.join(map(str, allowed))}, got {value!r}.")
    for key, (value, ok, expected) in (conditions or {}).items():
        if not ok:
            raise ConfigValueError(f"--{key}: expected {expected}, got {value!r}.")
    for key, value in (folders or {}).items():
        folder = Path(str(value)).expanduser()
        problem = folder_write_problem(folder)
        if problem is not None:
            raise ConfigValueError(f"--{key} {folder} {problem}.")


def folder_write_problem(folder: str | os.PathLike, beside: bool = False) -> str | None:
    """Why nothing can be written into ``folder`` (created where missing), or ``None`` where it can.

    Its first existing ancestor (the folder itself where it exists) must be a folder in which this process can
    create a folder: tried for real and undone, since ``os.access`` says yes to root everywhere, also on ``/proc``
    and on a read-only mount. Called before any work, so that a run is refused in one line rather than failing
    when it first saves.

    Args:
        folder: the folder a run will write into.
        beside: the folder is built beside itself (a temporary sibling moved into place at the end): its parent
            must be writable.

    Returns:
        What is wrong, said of the folder (``"is a file, not a folder"``, ``"cannot be created: A is a file"``,
        ``"cannot be written: no folder can be created in A (reason)"``), or ``None``.
    """
    folder = Path(folder).expanduser().absolute()
    probe = folder.parent if beside else folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return "is a file, not a folder" if probe == folder else f"cannot be created: {probe} is a file"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=probe))
    except OSError as e:
        return f"cannot be written: no folder can be created in {probe} ({e.strerror or e})"
    return None


#: the bundle command's own options (``monai.bundle.run``'s parameters), not ids of a config
RUN_OPTIONS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking", "args_file")
#: the options ``--tracking mlflow`` reads (MONAI's MLflow settings): given without it, nothing would be logged
TRACKING_ONLY = ("tracking_uri", "experiment_name", "run_name")
#: the ids the project's configs run (``run <id>``), offered where a run id is mistyped
RUN_IDS = ("training", "evaluating", "inferring", "datalist", "run")


def check_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse a command-line override that no config file of the run defines, e.g. ``--max_epoch 1``.

    ``python -m monai.bundle run`` adds an unknown ``--key value`` to the config, where nothing reads it: the run
    goes on with the default (9 epochs for ``--max_epoch 1``). Called from a config's ``initialize`` list, this reads
    the command line (only when it is the bundle command's: ``argv[0]`` is ``monai/bundle/__main__.py``) and the
    config files it names, and checks the first part of every ``--key`` (before a ``#``: nested keys of a dict such
    as ``--dataset_kwargs#num_patients`` may be new) against the files' top-level ids, :data:`RUN_OPTIONS` and the
    ids ``--tracking`` adds (``--tracking_uri``, ``--experiment_name``, ``--run_name``, ...); and that
    ``--tracking_uri``, ``--experiment_name`` and ``--run_name`` come with ``--tracking`` (alone they would log
    nothing), ``--tracking_uri`` is a database or a server, not a folder (MLflow 3 has no file store), and with
    ``--tracking`` that a tracking server (``--tracking_uri`` or ``MLFLOW_TRACKING_URI``) answers, before any data is
    prepared; and
    that the run id (``run evaluating``) is an id of the config files (MONAI would fail on it after this check).

    Args:
        argv: the command line (default ``sys.argv``).

    Raises:
        ConfigValueError: naming the option and the closest known one.
    """
    import ast
    import difflib

    argv = list(sys.argv if argv is None else argv)
    if not argv or not str(argv[0]).replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        return
    keys, values = [], {}
    for i, token in enumerate(argv[1:], start=1):
        if not token.startswith("--"):
            continue
        key, eq, value = token[2:].partition("=")
        values[key] = value if eq else argv[i + 1] if i + 1 < len(argv) else None
        keys.append(key)
    without = [k for k in TRACKING_ONLY if k in values] if "tracking" not in values else []
    if without:
        raise ConfigValueError(f"--{without[0]}: only with --tracking mlflow; without it the run logs nothing to "
                               "MLflow.")
    _check_tracking_uri(values.get("tracking_uri"))
    if "tracking" in values:
        check_tracking_uri(values.get("tracking_uri"))
    files = values.get("config_file")
    if not files:
        return
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    try:
        paths = ast.literal_eval(files) if files.lstrip().startswith(("[", "(")) else [files]
        known = {k.lstrip("+") for p in paths for k in ConfigParser.load_config_file(p)} | set(RUN_OPTIONS)
    except Exception:  # noqa: BLE001 -- MONAI's own loading reports unreadable config files
        return
    for settings in DEFAULT_EXP_MGMT_SETTINGS.values():  # --tracking mlflow adds its ids (--tracking_uri, ...)
        known |= set(settings.get("configs", {}))
    for key in keys:
        top = key.split("#", 1)[0]
        if top not in known:
            close = difflib.get_close_matches(top, sorted(known), n=1, cutoff=0.75)
            hint = f"did you mean --{close[0]}?" if close else "the options are the top-level keys of the config files"
            raise ConfigValueError(f"--{key}: no config file of this run has the option {top!r} ({hint}).")
    if len(argv) < 2 or argv[1] != "run":  # MONAI's other commands (onnx_export, ckpt_export, ...) run no run id
        return
    positional = argv[2] if len(argv) > 2 and not argv[2].startswith("--") else None
    run_id = str(values.get("run_id") or positional or "run")
    if run_id not in known - set(RUN_OPTIONS):
        ids = sorted(k for k in known - set(RUN_OPTIONS) if k in RUN_IDS)
        close = difflib.get_close_matches(run_id, ids, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else f"these configs run {', '.join(ids)}"
        raise ConfigValueError(f"run {run_id}: no config file of this run has the id {run_id!r} ({hint}).")


def check_tracking_uri(uri: str | None, option: str = "--tracking_uri") -> str | None:
    """The MLflow store a tracked run logs into, checked before any work starts.

    ``MLFLOW_TRACKING_URI`` overrides ``uri`` (as MLflow does); the store must be a database or a server (MLflow 3
    has no file store), and a server must answer.

    Args:
        uri: the tracking URI given (``None``: the config's default).
        option: the option that gave it, for the message.

    Returns:
        the URI the run logs into (``None``: the config's default).

    Raises:
        ConfigValueError: naming the option (or ``MLFLOW_TRACKING_URI``), the URI and what to give instead.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    uri, option = (env, "MLFLOW_TRACKING_URI") if env else (uri, option)
    _check_tracking_uri(uri, option)
    _check_tracking_server(uri, option)
    _check_tracking_database(uri, option)
    return uri


def _check_tracking_uri(uri: str | None, option: str = "--tracking_uri") -> None:
    """``--tracking_uri`` must be a database or a server: MLflow 3 has no file store (a ``file:`` URI or a folder)."""
    if uri is not None and (uri.startswith("file:") or "://" not in uri):
        raise ConfigValueError(
            f"{option} {uri}: MLflow {_mlflow_version()} keeps no runs in a folder (its file store is gone); "
            "give a database, e.g. sqlite:///mlflow.db, or a tracking server, e.g. http://127.0.0.1:5000."
        )


def _check_tracking_database(uri: str | None, option: str = "--tracking_uri") -> None:
    """A ``sqlite:///PATH`` tracking URI must name a database MLflow can create (its folder writable) or one that
    exists: MLflow would otherwise fail with a traceback when the run opens, after the data is prepared."""
    if not uri or not uri.lower().startswith("sqlite:///"):
        return
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:" or Path(path).is_file():
        return
    problem = folder_write_problem(Path(path).parent)
    if problem is not None:
        raise ConfigValueError(f"{option} {uri}: the database's folder {Path(path).parent} {problem}; give a "
                               "database in a folder you can write, e.g. sqlite:///mlflow.db.")


def _check_tracking_server(uri: str | None, option: str = "--tracking_uri", timeout: float = 5.0) -> None:
    """An ``http(s)://`` tracking URI must answer (MLflow's ``/health``; any HTTP reply counts), within ``timeout``
    seconds: MLflow's client would otherwise retry for minutes, after the data is prepared."""
    import urllib.error
    import urllib.request

    if not uri or not uri.lower().startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:  # it answered (an error status, e.g. behind a login): a server is there
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise ConfigValueError(
            f"{option} {uri}: no MLflow tracking server answers there ({reason}); start it (mlflow server ...) "
            "or give another tracking URI, e.g. sqlite:///mlflow.db."
        ) from None


def _mlflow_version() -> str:
    try:
        from importlib.metadata import version

        return version("mlflow")
    except Exception:  # noqa: BLE001 -- not installed
        return "3"


def _user_error_in(exc: BaseException | None) -> BaseException | None:
    """The first user error (or Ctrl-C stop) in ``exc``'s chain of causes; MONAI's config parser wraps errors of
    ``$``-expressions and components in ``RuntimeError``-s."""
    seen: set[int] = set()
    user_types: tuple[type[BaseException], ...] = (UserInputError, KeyboardInterrupt)
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, user_types):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class QuietUserErrors(logging.Filter):
    """Drops an engine's log records of a :class:`UserInputError` or a Ctrl-C (ignite's "Engine run is terminating
    due to exception" line, empty for a ``KeyboardInterrupt``): the command prints that error, or how the run was
    interrupted, as its one line (:func:`install_cli_error_hook`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not isinstance(error, (UserInputError, KeyboardInterrupt))


def quiet_user_errors(logger: logging.Logger) -> None:
    """Add :class:`QuietUserErrors` to ``logger`` (once: ignite has one logger per engine class)."""
    if not any(isinstance(f, QuietUserErrors) for f in logger.filters):
        logger.addFilter(QuietUserErrors())


def install_cli_error_hook() -> None:
    """Make the bundle command print a user error as one line (``error: ...``) and exit with status 2.

    ``python -m monai.bundle run`` lets exceptions of the config reach the interpreter, which prints every
    chained traceback (70 and more lines ending in MONAI's generic "Failed to evaluate ConfigExpression").
    Called from a config's ``initialize`` list (run before the ``training`` list is parsed), this replaces
    ``sys.excepthook``: when the chain of causes holds a :class:`UserInputError` it prints that message alone and
    exits with status 2; Ctrl-C (:class:`TrainingInterrupted` with its message on how to resume, or a plain
    ``KeyboardInterrupt`` outside training) prints one line and exits with status 130; any other exception (a
    bug) keeps the full traceback.
    """
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        found = _user_error_in(exc)
        if found is None:
            previous(exc_type, exc, tb)
            return
        sys.stdout.flush()
        if isinstance(found, KeyboardInterrupt):
            print(str(found) or "interrupted by Ctrl-C.", file=sys.stderr, flush=True)
            sys.exit(EXIT_INTERRUPTED)
        print(f"error: {found}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)

    if getattr(sys.excepthook, "_monai_probunet", False):
        return
    hook._monai_probunet = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def quiet_optional_decoder() -> None:
    """Silence MONAI's notes that its optional GPU DICOM decoder (nvImageCodec) is absent.

    Every ``LoadImage`` without a fixed reader sets up all of MONAI's readers, the GPU one included, which warns
    that it fell back to pydicom (a line in every training and evaluation run), and MONAI's decoder plugin logs the
    same for every compressed DICOM file. Called by the CLIs, the MONAI Label app and a config's ``initialize`` list;
    other warnings and the decoder's errors still show.
    """
    import logging
    import warnings

    logging.getLogger(OPTIONAL_DECODER_LOGGER).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=OPTIONAL_DECODER_WARNING, category=UserWarning)


def log_progress_to_stderr(fmt: str) -> None:
    """A command line's logging: its own INFO lines (progress, summaries) on stderr in ``fmt``; torch only warns.

    torch sets its loggers to WARNING once its import completes. A Ctrl-C during that import (a CLI importing torch
    lazily, after its arguments are checked) leaves them at the root's INFO, and torch's exit hook then logs its
    cache statistics after the CLI's last line ("interrupted by Ctrl-C ..."). Setting torch's level first keeps
    that line last.
    """
    logging.basicConfig(level=logging.INFO, format=fmt)
    logging.getLogger("torch").setLevel(logging.WARNING)


def bundle_root(start: str | os.PathLike | None = None) -> str:
    """The bundle folder seen from ``start`` (default: the working directory).

    ``python -m monai.bundle run`` does not tell a config where its files are (model-zoo bundles set
    ``bundle_root: "."`` and are run from the bundle folder), so this looks where the commands are run: ``start``
    itself when it holds ``configs/`` (run from the bundle folder), else ``start/bundle`` when that does (run from the
    repository root). From anywhere else pass ``--bundle_root DIR`` (it replaces the config's value, so this is not
    called); the folders derived from it (``ckpt_dir``, ``dataset_dir``, ``output_dir``) can be passed as well.

    Args:
        start: the folder commands are run from.

    Raises:
        ConfigValueError: neither folder holds ``configs/``; the message names ``start`` and ``--bundle_root``.
    """
    here = Path.cwd() if start is None else Path(start).expanduser()
    for folder in (here, here / "bundle"):
        if (folder / "configs").is_dir():
            return str(folder.resolve())
    raise ConfigValueError(
        f"--bundle_root: {here} holds neither configs/ nor bundle/configs/; run the bundle command from the "
        "repository root or the bundle folder, or pass --bundle_root DIR (the folder holding configs/)."
    )
