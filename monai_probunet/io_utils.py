"""All-or-nothing writes: files replaced atomically, output folders replaced as a whole.

A file a later step loads (a model, a threshold, a summary) is written to a temporary file in the same folder and
``os.replace``-d onto its name, so readers see either the previous complete file or the new complete one, never a
truncated one. A set of outputs (several files that belong together) is written into a temporary sibling folder and
moved into place at the end (:class:`staged_dir`); a folder that holds something the project did not write is never
replaced or deleted.

Also :func:`load_network_weights`, the one place a checkpoint is read (``weights_only=True``, clear errors).

This module imports only the standard library and :mod:`.bundle_utils` (torch lazily where needed), so
command-line entry points can use it before their heavy imports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .bundle_utils import InputFileError, InputFileNotFoundError, UserInputError, folder_write_problem

__all__ = [
    "OutputFolderError",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_network_weights",
    "pid_alive",
    "read_json",
    "remove_stale_temporaries",
    "staged_dir",
    "temporary_prefix",
]

#: the marker in the names of this module's temporaries: ``.<name>.probunet-<pid>-<random>.tmp`` (a file being
#: written, or the folder holding it), ``.partial`` (an output set being staged) and ``.old`` (the set it replaces)
TEMPORARY_MARKER = "probunet"
_TEMPORARY = re.compile(
    rf"\.(?P<name>.+)\.(?:{TEMPORARY_MARKER}-(?P<pid>\d+)-[a-z0-9_]*\.(?:tmp|partial|old)"
    r"|(?P<staged_pid>\d+)-[a-z0-9_]{8}\.(?:partial|old)|(?:tmp|old)-(?P<dataset_pid>\d+))"
)  # the second and third forms: the names of earlier versions, removed only where a name is given
_swept: set[Path] = set()


class OutputFolderError(UserInputError, ValueError):
    """An output path that cannot be (re)placed: a file, unwritable, or a folder holding files of someone else."""


def read_json(path: str | os.PathLike, what: str = "", error: type[Exception] = ValueError) -> Any:
    """The JSON content of ``path``; an unreadable or invalid file raises ``error`` with one line naming it.

    Args:
        path: the file (its existence is the caller's check, with the caller's message).
        what: how the file is named in the message, e.g. ``"centers file"`` (default: just the path).
        error: the exception type raised (a ``ValueError`` subclass where the caller has its own user-error type).
    """
    name = f"{what} {path}" if what else str(path)
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{name} is not valid JSON: {e}") from None
    except OSError as e:
        raise error(f"{name} cannot be read: {e}") from None


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` through ``write(tmp_path)`` into a temporary file of the same folder, then ``os.replace``.

    Args:
        path: the final file (its folder is created).
        write: called with the temporary file's path; must write the whole content there.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    On any exception (including ``KeyboardInterrupt``) the temporary file is removed and ``path`` is untouched; one
    that a killed process left in the folder is removed by the next write there (:func:`remove_stale_temporaries`).
    The file gets the permissions of a plain ``open(path, "w")`` (``0o666`` minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data`` (:func:`atomic_write`)."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text`` (:func:`atomic_write`)."""
    return atomic_write(path, lambda p: p.write_text(text, encoding=encoding))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1, **kwargs: Any) -> Path:
    """Atomically replace ``path`` with ``json.dumps(data, indent=indent, **kwargs)`` (serialised first, so an
    object that is not JSON-serialisable leaves ``path`` untouched)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, **kwargs))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``, with reproducible bytes.

    ``torch.save`` names the records inside its zip archive after the stem of the file name it is given
    (``model.pt`` -> ``model/data.pkl``), so the temporary file has the final file's name, in a temporary folder
    beside ``path``: the same object saved twice to the same name gives the same bytes, whatever the temporary name.

    Args:
        obj: what ``torch.save`` writes.
        path: the final file (its folder is created).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    On any exception (including ``KeyboardInterrupt``) the temporary folder is removed and ``path`` is untouched; one
    that a killed process left is removed by the next write there (:func:`remove_stale_temporaries`).
    The file gets the permissions of a plain ``open(path, "w")`` (``0o666`` minus the umask).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    folder = Path(tempfile.mkdtemp(prefix=temporary_prefix(path.name), suffix=".tmp", dir=path.parent))
    tmp = folder / path.name
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs (one of another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_prefix(name: str) -> str:
    """The start of a temporary's name for the file or folder ``name``: ``.<name>.probunet-<pid>-``."""
    return f".{name}.{TEMPORARY_MARKER}-{os.getpid()}-"


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> int:
    """Remove from ``folder`` the temporaries of this module that killed runs left behind.

    A temporary is removed only when its name says this module made it (:data:`TEMPORARY_MARKER` and a process id)
    and that process is gone: another running process's temporaries and every other file are kept.

    Args:
        folder: the folder holding the temporaries (a missing or unreadable folder: nothing to do).
        name: only the temporaries of this file or folder name (default: all).

    Returns:
        how many were removed.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        found = _TEMPORARY.fullmatch(entry.name)
        if found is None or (name is not None and found["name"] != name):
            continue
        pid = found["pid"] or (found["staged_pid"] or found["dataset_pid"] if name is not None else None)
        if pid is None or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            Path(entry.path).unlink(missing_ok=True)
        removed += 1
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temporaries` for every name, the first time this process writes into ``folder``."""
    key = folder.absolute()
    if key not in _swept:
        _swept.add(key)
        remove_stale_temporaries(key)


class staged_dir:
    """Write a set of outputs into a temporary sibling folder and move it onto ``target`` only when complete.

    Usage::

        with staged_dir(out, is_ours=lambda d: (d / "report.json").is_file(), what="--out") as tmp:
            write everything into tmp
        # here out holds the complete new set; on an exception the previous out is untouched

    ``target`` may be missing, an empty folder, or a folder for which ``is_ours(target)`` is true (a set this
    project wrote earlier: it is replaced as a whole). Anything else is refused *before* any work is done, with
    :class:`OutputFolderError` naming the path: an existing file, a folder holding other files, a parent folder
    that is not writable. Nothing the project did not write is deleted. The staging folder is
    ``.<name>.probunet-<pid>-<random>.partial`` beside ``target``: one that a killed run left is removed by the next
    run (:func:`remove_stale_temporaries`).

    Args:
        target: the output folder.
        is_ours: ``folder -> bool``, true for a folder this project wrote (and nothing else is in it).
        what: how the folder is called in messages (e.g. ``"--out"``).
    """

    def __init__(self, target: str | os.PathLike, is_ours: Callable[[Path], bool], what: str = "output folder"):
        self.target = Path(target)
        self.what = what
        self.tmp: Path | None = None
        t = self.target
        if t.exists() or t.is_symlink():
            if not t.is_dir():
                raise OutputFolderError(f"{what} {t} is a file, not a folder; give a folder path.")
            if any(t.iterdir()) and not is_ours(t):
                raise OutputFolderError(
                    f"{what} {t} is a folder holding files this program did not write; it is left untouched: "
                    "give an empty or new folder."
                )
        problem = folder_write_problem(t, beside=True)  # __enter__ creates the staging folder beside it
        if problem is not None:
            raise OutputFolderError(f"{what} {t} {problem}.")

    def __enter__(self) -> Path:
        parent = self.target.absolute().parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(parent, self.target.name)
            self.tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(self.target.name), suffix=".partial", dir=parent))
        except OSError as e:
            raise OutputFolderError(f"{self.what} {self.target}: cannot create a folder in {parent} ({e}).") from e
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        os.chmod(self.tmp, _umask_mode() | ((_umask_mode() & 0o444) >> 2))  # as mkdir would (mkdtemp: 0o700)
        old = None
        try:
            if self.target.exists():
                prefix = temporary_prefix(self.target.name)
                old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=self.tmp.parent))
                os.rename(self.target, old / "set")
            os.rename(self.tmp, self.target)
        except BaseException:
            if old is not None and (old / "set").exists() and not self.target.exists():
                os.rename(old / "set", self.target)  # put the previous set back
            shutil.rmtree(self.tmp, ignore_errors=True)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def load_network_weights(network: Any, path: str | os.PathLike) -> Any:
    """Load a state dict (``model.pt``, or a checkpoint dict holding it under ``"model"``) with ``weights_only``.

    Raises:
        InputFileNotFoundError: (a ``FileNotFoundError``) no such file.
        InputFileError: (a ``ValueError``) an empty, truncated, corrupt or unsafe file, or weights that do not fit
            ``network``; the message names the file. Both print as one line from the bundle command.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError(
            f"checkpoint {path} does not exist: train first (run id `training`) or set --ckpt_path / --ckpt_dir (the "
            "shipped model: --ckpt_dir bundle/models; a model trained with --dataset_name folder --dataset_dir DIR is "
            "in bundle/models/<DIR's name>)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # empty, truncated, corrupt or unsafe pickles raise many types
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if msg.startswith("Weights only load failed"):  # torch's advice to load it unsafely is not ours to give
            msg = "it holds objects other than tensors, which loading would have to run as code"
        raise InputFileError(
            f"checkpoint {path} is not a readable PyTorch state dict (empty, truncated, corrupt or not a weights "
            f"file; weights_only=True): {type(e).__name__}: {msg[:300]}"
        ) from e
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping):
        raise InputFileError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict of tensors.")
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise InputFileError(
            f"checkpoint {path} does not fit {type(network).__name__} as configured (network_def, channels, "
            f"latent_dim, ...): {detail[:400]}{'...' if len(detail) > 400 else ''}"
        ) from e
    return network
