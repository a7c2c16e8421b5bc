"""Checkpoint and threshold IO: build a network from a bundle config and load its weights (:func:`load_model`), load
weights into a given network or an ensemble (:func:`load_trained_network`), and find the fitted presence threshold
next to a checkpoint (:func:`find_presence_threshold`). Every checkpoint loads with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import hashlib
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .ct_io import DEFAULT_HU_WINDOW, DEFAULT_ROI_SIZE, SPACING_HINT, _pair
from .hypotheses import _as_threshold
from .io_utils import read_json
from .metrics import PresenceThreshold

__all__ = [
    "MODEL_SETTINGS_NAME",
    "PRESENCE_THRESHOLD_NAME",
    "REPO_CONFIG",
    "bundle_config",
    "check_device",
    "find_presence_threshold",
    "load_model",
    "load_trained_network",
    "model_grid",
    "model_record",
    "read_model_settings",
    "write_model_settings",
]

#: the package's own bundle configuration: the network definition :func:`load_model` falls back to for a checkpoint
#: that does not sit in a bundle folder (:func:`bundle_config`)
REPO_CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.yaml"
PRESENCE_THRESHOLD_NAME = "presence_threshold.json"
#: what a training run records beside ``model.pt`` (:func:`write_model_settings`): the grid the model was trained on
#: (``infer_spacing``, ``infer_roi_size``, ``hu_window``), the data it was trained on and the weights it describes
MODEL_SETTINGS_NAME = "model.json"
#: ``written_by`` of a model's settings: the folder's model files were written by a training run of this package
MODEL_WRITTEN_BY = "monai_probunet.training"
#: the settings inference takes from ``model.json`` before the config (each a config id)
_GEOMETRY_KEYS = ("hu_window", "infer_spacing", "infer_roi_size")


class _LazyModule:
    """Stands for ``import name`` in a config's ``imports``: the module is imported at the first attribute access
    (a submodule too: ``monai_probunet.bundle_utils``), so resolving ``network_def`` imports only what it uses."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import importlib

        module = importlib.import_module(self._name)
        try:
            return getattr(module, attr)
        except AttributeError:
            return importlib.import_module(f"{self._name}.{attr}")


def _defer_imports(parser: Any) -> None:
    """Replace the ``$import a.b`` entries of a parsed config's ``imports`` by :class:`_LazyModule` globals.

    MONAI evaluates every import statement of a config whenever it resolves any item; train.yaml imports ignite and
    the training modules, which the inference path does not need (seconds of import time).
    """
    import re

    imports = parser.get("imports")
    if not isinstance(imports, list):
        return
    keep = []
    for item in imports:
        m = re.fullmatch(r"\$import\s+([\w.]+)(?:\s+as\s+(\w+))?\s*", str(item))
        if m is None:
            keep.append(item)
            continue
        name, alias = m.group(1), m.group(2)
        target = name if alias else name.split(".")[0]
        parser.globals[alias or target] = _LazyModule(target)
    parser["imports"] = keep


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, refusing (``ValueError``) a malformed name or a CUDA/MPS device that is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (use --device cpu).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use --device cpu).")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: unsupported device type {dev.type!r} (use cpu or cuda).")
    return dev


def bundle_config(ckpt_path: str | os.PathLike) -> Path:
    """The bundle config a checkpoint was trained with: ``configs/train.yaml`` of the bundle folder holding it.

    A bundle keeps its checkpoints under ``<bundle>/models/`` (also ``models/<task>/<variant>/``) and its configs
    under ``<bundle>/configs/``; a checkpoint elsewhere, or a bundle without ``configs/train.yaml``, gets the
    package's own bundle config (:data:`REPO_CONFIG`).

    Args:
        ckpt_path: the checkpoint (``model.pt``).

    Returns:
        The config path (not checked for existence when it is :data:`REPO_CONFIG`).
    """
    folder = Path(ckpt_path).expanduser().resolve().parent
    for parent in (folder, *folder.parents):
        if parent.name == "models":
            config = parent.parent / "configs" / "train.yaml"
            if config.is_file():
                return config
            break
    return REPO_CONFIG


def load_model(
    ckpt_path: str | os.PathLike,
    config_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    network_id: str = "network_def",
    device: str | torch.device = "cpu",
    spacing: float | Sequence[float] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network from a bundle config and load a checkpoint into it (``weights_only=True``).

    Args:
        ckpt_path: ``model.pt`` (a state dict, or a checkpoint dict holding it under ``"model"``).
        config_file: Bundle config file(s) defining ``network_id`` (default: :func:`bundle_config` of
            ``ckpt_path``: ``configs/train.yaml`` of the bundle holding the checkpoint, else the package's own).
        network_id: Config id of the network definition.
        device: Where to put the network (:func:`check_device`).
        spacing: The model's in-plane spacing in mm, overriding the config's ``infer_spacing``.

    Returns:
        tuple: ``(network in eval mode, settings)`` where ``settings`` holds ``hu_window``, ``spacing`` and
            ``roi_size``: those the model was trained with (``model.json`` beside the checkpoint,
            :func:`read_model_settings`), else the config's (``hu_window``, ``infer_spacing``, ``infer_roi_size``; else
            :data:`DEFAULT_HU_WINDOW` and :data:`DEFAULT_ROI_SIZE`); ``spacing`` given here overrides both.

    Raises:
        FileNotFoundError: A missing config or checkpoint file.
        ValueError: A config that does not parse or defines no network, no ``infer_spacing`` (and no ``spacing`` given),
            a checkpoint that is not a readable state dict of that network, an unavailable device.
    """
    dev = check_device(device)
    from .io_utils import load_network_weights

    files = [bundle_config(ckpt_path)] if config_file is None else config_file
    files = [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"config file {f} does not exist.")
    parser = _read_configs(files)
    if network_id not in parser:
        raise ValueError(f"config {files} defines no {network_id!r}.")
    if spacing is None and "infer_spacing" not in parser:
        raise ValueError(f"config {files} defines no infer_spacing: {SPACING_HINT}.")
    try:
        network = parser.get_parsed_content(network_id, instantiate=True)
        settings = {
            "hu_window": tuple(parser.get_parsed_content("hu_window")) if "hu_window" in parser else DEFAULT_HU_WINDOW,
            "spacing": spacing if spacing is not None else parser.get_parsed_content("infer_spacing"),
            "roi_size": parser.get_parsed_content("infer_roi_size") if "infer_roi_size" in parser else DEFAULT_ROI_SIZE,
        }
    except Exception as e:  # a config expression can raise anything
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"config {files}: {network_id!r} could not be built: {type(e).__name__}: {msg}") from e
    load_network_weights(network, ckpt_path)
    trained = read_model_settings(ckpt_path) or {}
    for key, name in zip(_GEOMETRY_KEYS, ("hu_window", "spacing", "roi_size")):  # the grid it was trained on
        if trained.get(key) is not None and not (name == "spacing" and spacing is not None):
            settings[name] = tuple(trained[key]) if name == "hu_window" else list(trained[key])
    _pair(settings["spacing"], "infer_spacing", float)
    return network.to(dev).eval(), settings


def _read_configs(files: list[str]) -> Any:
    """A ``ConfigParser`` of the config files (imports deferred); a file that does not parse is a ``ValueError``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(files)
    except Exception as e:  # yaml/json raise many types
        hint = ""
        if isinstance(e, KeyError) and "query key" in str(e):  # an override refers to ids of the base config
            hint = f"; an override config needs train.yaml before it, e.g. --config {REPO_CONFIG} {files[-1]}"
        raise ValueError(
            f"config {files} could not be read: {type(e).__name__}: {' '.join(str(e).split())}{hint}"
        ) from e
    _defer_imports(parser)
    return parser


def model_grid(
    model_path: str | os.PathLike | None,
    config_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> tuple[list[float], list[int]]:
    """The grid a model takes its crops on: in-plane pixel spacing (mm) and crop size (pixels).

    Those the model was trained on (``infer_spacing`` / ``infer_roi_size`` of its ``model.json``,
    :func:`read_model_settings`), else the config's (default :func:`bundle_config` of ``model_path``;
    ``infer_roi_size`` else :data:`DEFAULT_ROI_SIZE`), as :func:`load_model` resolves them, without building the
    network. ``model_path`` may be ``None`` or not exist yet (no model in use): the config's grid.

    Returns:
        ``([spacing_0, spacing_1], [roi_0, roi_1])``.

    Raises:
        ValueError: a config that does not parse or has no ``infer_spacing``, or a grid that is not 2 positive values.
    """
    record = read_model_settings(model_path) if model_path is not None and Path(model_path).is_file() else None
    spacing = (record or {}).get("infer_spacing")
    roi = (record or {}).get("infer_roi_size")
    if spacing is None or roi is None:
        files = [bundle_config(model_path or REPO_CONFIG)] if config_file is None else config_file
        files = [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
        parser = _read_configs(files)
        try:
            if spacing is None:
                if "infer_spacing" not in parser:
                    raise ValueError(f"config {files} defines no infer_spacing: {SPACING_HINT}.")
                spacing = parser.get_parsed_content("infer_spacing")
            if roi is None:
                roi = parser.get_parsed_content("infer_roi_size") if "infer_roi_size" in parser else DEFAULT_ROI_SIZE
        except ValueError:
            raise
        except Exception as e:  # config expressions raise many types
            raise ValueError(f"config {files} could not be read: {type(e).__name__}: {' '.join(str(e).split())}") \
                from e
    spacing, roi = _pair(spacing, "infer_spacing", float), _pair(roi, "infer_roi_size", int)
    return [float(v) for v in spacing], [int(v) for v in roi]


def write_model_settings(model_path: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """Write ``model.json`` beside ``model_path`` (atomically): ``settings`` plus the weights' SHA-256 and
    ``written_by``, so that inference resamples to the grid the model was trained on and the folder is known as a
    training run's (:mod:`monai_probunet.model_folder`).

    Args:
        model_path: the ``model.pt`` just written.
        settings: JSON-serialisable values: ``hu_window``, ``infer_spacing``, ``infer_roi_size``, ``dataset``, ...

    Returns:
        The written path.
    """
    from .io_utils import atomic_write_json

    record = {**dict(settings), "weights_sha256": weights_sha256(model_path), "written_by": MODEL_WRITTEN_BY}
    return atomic_write_json(Path(model_path).parent / MODEL_SETTINGS_NAME, record)


def model_record(folder: str | os.PathLike, warn: bool = False) -> dict[str, Any] | None:
    """A training run's ``model.json`` in ``folder`` (whatever weights it describes), else ``None`` (none, not a
    run's, or unreadable: with ``warn`` a warning says so)."""
    path = Path(folder) / MODEL_SETTINGS_NAME
    if not path.is_file():
        return None
    try:
        record = read_json(path, "model settings file")
    except ValueError as e:
        if warn:
            warnings.warn(f"{e}; the config's settings are used.", UserWarning, stacklevel=3)
        return None
    return record if isinstance(record, dict) and record.get("written_by") == MODEL_WRITTEN_BY else None


def read_model_settings(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """``model.json`` beside ``model_path`` when it describes these weights, else ``None`` (no file, an unreadable
    one, or one written for other weights: a warning says so)."""
    path = Path(model_path).parent / MODEL_SETTINGS_NAME
    record = model_record(path.parent, warn=True) if Path(model_path).is_file() else None
    if record is None:
        return None
    if record.get("weights_sha256") != weights_sha256(model_path):
        warnings.warn(f"{path} describes other weights than {model_path}; the config's settings are used.",
                      UserWarning, stacklevel=2)
        return None
    return record


def weights_sha256(ckpt_path: str | os.PathLike) -> str:
    """The SHA-256 of a checkpoint's tensors (names, shapes, dtypes and values, in name order): which weights a
    presence rule was fitted for, whatever file or archive they were saved in."""
    digest = hashlib.sha256()

    def add(prefix: str, obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            digest.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
            # flat first: a channels-last weight with 1x1 kernels counts as contiguous with a last stride above 1
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                add(f"{prefix}/{key}", obj[key])

    add("", torch.load(ckpt_path, map_location="cpu", weights_only=True))
    return digest.hexdigest()


def find_presence_threshold(ckpt_path: str | os.PathLike) -> PresenceThreshold | None:
    """The fitted threshold in ``presence_threshold.json`` next to ``ckpt_path``, or ``None`` if there is none.

    A rule fitted for other weights (its ``weights_sha256`` is not the checkpoint's: the folder's model was retrained
    since) is not used: a warning says so and how to refit it, and ``None`` sends the caller to the fallback rule.
    """
    path = Path(ckpt_path).parent / PRESENCE_THRESHOLD_NAME
    if not path.is_file():
        return None
    threshold = _as_threshold(path)
    fitted_for = read_json(path, "presence threshold file").get("weights_sha256")
    if fitted_for and Path(ckpt_path).is_file() and fitted_for != weights_sha256(ckpt_path):
        warnings.warn(
            f"{path} was fitted for other weights than {ckpt_path} (retrained since), so the fallback presence rule "
            "is used; refit it: python -m monai.bundle run evaluating --config_file \"['bundle/configs/train.yaml',"
            f"'bundle/configs/evaluate.yaml']\" --ckpt_dir {Path(ckpt_path).parent} --save_presence_threshold_to "
            f"{path}",
            UserWarning,
            stacklevel=2,
        )
        return None
    return threshold


def load_trained_network(
    network: nn.Module, ckpt_path: str | Path | None = None, ensemble_ckpts: Sequence[str | Path] | None = None
) -> nn.Module:
    """``network`` with ``ckpt_path`` loaded, or a :class:`~monai_probunet.networks.UNetEnsemble` of one copy of
    ``network`` per member checkpoint in ``ensemble_ckpts`` (all with ``weights_only=True``)."""
    from .bundle_utils import ConfigValueError, InputFileNotFoundError
    from .io_utils import load_network_weights
    from .networks import UNetEnsemble

    if isinstance(ensemble_ckpts, (str, bytes, os.PathLike)):  # one path: each character would be a member
        raise ConfigValueError("--ensemble_ckpts: expected a list of member checkpoints such as "
                               f"\"['member_0/model.pt', 'member_1/model.pt']\", got {str(ensemble_ckpts)!r}.")
    if ensemble_ckpts:
        missing = [str(p) for p in ensemble_ckpts if not Path(p).is_file()]
        if missing:
            raise InputFileNotFoundError(f"--ensemble_ckpts: member checkpoint(s) {missing} do not exist.")
        return UNetEnsemble([load_network_weights(copy.deepcopy(network), p) for p in ensemble_ckpts])
    if ckpt_path is None:
        raise ValueError("give ckpt_path (a model.pt) or ensemble_ckpts (a list of member checkpoints).")
    return load_network_weights(network, ckpt_path)
