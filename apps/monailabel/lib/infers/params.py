"""Validation of the request parameters of the ``probunet`` infer task (no MONAI Label import: unit-testable)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLICK_MESSAGE", "MAX_EXTENT_MM", "MAX_SAMPLES", "MODES", "InferParams", "current_click", "parse_bool",
    "parse_int", "parse_params",
]

#: upper bound on hypotheses per request (memory: S x voxels bytes for the label maps)
MAX_SAMPLES = 256
#: ``mode``: ``auto`` = 3-D for a volume, 2-D for a single slice; ``3d`` (a volume only); ``2d`` (the clicked slice)
MODES = ("auto", "3d", "2d")
#: upper bound on ``max_extent_mm`` (the lesion extent followed from the click in 3-D)
MAX_EXTENT_MM = 500.0
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")
#: the answer to a request without a lesion click (or a ``center``)
CLICK_MESSAGE = (
    "no lesion point: click the centre of the lesion (a foreground point in 3D Slicer's MONAI Label module, "
    "'foreground': [[i, j, k]]) or give 'center': [x, y(, z)]; the model never guesses the lesion position."
)


@dataclass(frozen=True)
class InferParams:
    """Parsed request parameters.

    Attributes:
        center: Lesion centre (voxel indices of the loaded array, or mm with ``world``).
        from_click: ``center`` is a ``foreground`` click (3D Slicer's IJK voxel indices of the volume): the newest
            one on the request's ``slice`` (:func:`current_click`).
        world: ``center`` in world millimetres.
        frame: ``"RAS"`` or ``"LPS"``.
        num_samples: Hypotheses to draw, ``1 .. MAX_SAMPLES``.
        seed: Sampling seed.
        hypotheses: Return all hypotheses (multi-segment ``.seg.nrrd``) instead of the most frequent variant.
        mode: ``"auto"`` (3-D for a volume, 2-D for a slice), ``"3d"`` or ``"2d"``.
        max_extent_mm: 3-D: the largest lesion extent followed along the slice axis.
        allow_non_ct: Run on an image whose intensities are not plausibly CT in HU (a crop without air, lung or
            fat), with a warning in the log, instead of refusing it.
        center_source: Where ``center`` came from: ``"center"`` or ``"foreground[i]"``.
    """

    center: list[float]
    from_click: bool
    world: bool
    frame: str
    num_samples: int
    seed: int
    hypotheses: bool
    mode: str = "auto"
    max_extent_mm: float = 40.0
    allow_non_ct: bool = False
    center_source: str = "center"


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"parameter {name!r} must be true or false, got {value!r}.")


def parse_int(value: Any, name: str, low: int, high: int) -> int:
    """``value`` (an integer, or its text) checked to lie in ``[low, high]``; ``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        raise ValueError(f"parameter {name!r} must be an integer, got {value!r}.")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"parameter {name!r} must be an integer, got {value!r}.") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"parameter {name!r} must be an integer, got {value!r}.")
    if not low <= value <= high:
        raise ValueError(f"parameter {name!r} must lie in [{low}, {high}], got {value}.")
    return value


def _point(value: Any, name: str) -> list[float]:
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3):
        raise ValueError(f"parameter {name!r} must be a list of 2 or 3 numbers, got {value!r}.")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"parameter {name!r} must hold finite numbers, got {value!r}.")
        out.append(float(v))
    return out


def _points(value: Any, name: str) -> list[list[float]]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(p, (list, tuple)) for p in value):
        raise ValueError(f"parameter {name!r} must be a list of points [[x, y(, z)], ...], got {value!r}.")
    return [_point(p, f"{name}[{i}]") for i, p in enumerate(value)]


def _mode(value: Any) -> str:
    if isinstance(value, (list, tuple)) and value:  # the options list (MONAI Label merges the task's config into a
        value = value[0]                             # request without the key): its first entry, the default
    if not isinstance(value, str) or value.strip().lower() not in MODES:
        raise ValueError(f"parameter 'mode' must be one of {list(MODES)}, got {value!r}.")
    return value.strip().lower()


def _extent(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= MAX_EXTENT_MM:
        raise ValueError(f"parameter 'max_extent_mm' must be a number in (0, {MAX_EXTENT_MM:g}] mm, got {value!r}.")
    return float(value)


def current_click(foreground: list[list[float]], slice_index: Any) -> int:
    """The index of the click the user placed last, as far as the request tells.

    3D Slicer's MONAI Label module sends, for a 2-D model, the foreground points of the slice just clicked in the
    order they were placed, and that slice as ``slice``; on slice 0 (and for a 3-D model) it sends the points of
    every slice. The newest point on ``slice`` is the one just placed; without ``slice`` (a REST client), or with no
    point on it, the last point.

    Raises:
        ValueError: ``slice`` is given but not an integer.
    """
    if slice_index is None:
        return len(foreground) - 1
    integer = isinstance(slice_index, (int, float)) and not isinstance(slice_index, bool)
    if not integer or not math.isfinite(slice_index) or not float(slice_index).is_integer():
        raise ValueError(f"parameter 'slice' must be the integer index of the clicked slice, got {slice_index!r}.")
    on_slice = [i for i, p in enumerate(foreground) if len(p) == 3 and abs(p[2] - float(slice_index)) < 0.5]
    return on_slice[-1] if on_slice else len(foreground) - 1


def parse_params(request: Mapping[str, Any]) -> InferParams:
    """Parse and check ``center`` / ``foreground``, ``world``, ``frame``, ``num_samples``, ``seed``, ``hypotheses``,
    ``mode``, ``max_extent_mm``.

    ``center`` (REST) wins over ``foreground`` (MONAI Label's click list ``[[i, j, k], ...]`` as 3D Slicer sends
    it: the newest point on ``slice`` is the lesion centre, :func:`current_click`). ``background`` clicks are
    checked but not used. ``allow_non_ct`` as the CLI's ``--allow-non-ct``. Other keys the Slicer module sends
    (``label``, ``label_info``, ``client_id``, ``result_extension``, ...) are left to the caller.

    Raises:
        ValueError: Naming the offending parameter, or :data:`CLICK_MESSAGE` when there is neither ``center`` nor a
            ``foreground`` point.
    """
    fg = _points(request.get("foreground"), "foreground")
    _points(request.get("background"), "background")
    if request.get("center") is not None:
        center, from_click = _point(request["center"], "center"), False
    elif fg:
        index = current_click(fg, request.get("slice"))
        center, from_click = fg[index], True
    else:
        raise ValueError(CLICK_MESSAGE)
    frame = request.get("frame", "RAS")
    if not isinstance(frame, str) or frame.upper() not in ("RAS", "LPS"):
        raise ValueError(f"parameter 'frame' must be 'RAS' or 'LPS', got {frame!r}.")
    return InferParams(
        center=center,
        from_click=from_click,
        world=parse_bool(request.get("world", False), "world"),
        frame=frame.upper(),
        num_samples=parse_int(request.get("num_samples", 16), "num_samples", 1, MAX_SAMPLES),
        seed=parse_int(request.get("seed", 0), "seed", 0, 2**63 - 1),
        hypotheses=parse_bool(request.get("hypotheses", False), "hypotheses"),
        mode=_mode(request.get("mode", "auto")),
        max_extent_mm=_extent(request.get("max_extent_mm", 40.0)),
        allow_non_ct=parse_bool(request.get("allow_non_ct", False), "allow_non_ct"),
        center_source=f"foreground[{index}]" if from_click else "center",
    )
