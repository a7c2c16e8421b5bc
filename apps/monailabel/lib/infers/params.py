"""Validation of the request parameters of the ``probunet`` infer task (no MONAI Label import: unit-testable)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CLICK_MESSAGE", "MAX_SAMPLES", "InferParams", "parse_bool", "parse_params"]

#: upper bound on hypotheses per request (memory: S x voxels bytes for the label maps)
MAX_SAMPLES = 256
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

    Attributes
    ----------
    center : list of float
        Lesion centre (voxel indices of the loaded array, or mm with ``world``).
    from_click : bool
        ``center`` is the first ``foreground`` click (3D Slicer's IJK voxel indices of the volume).
    world : bool
        ``center`` in world millimetres.
    frame : str
        ``"RAS"`` or ``"LPS"``.
    num_samples : int
        Hypotheses to draw, ``1 .. MAX_SAMPLES``.
    seed : int
        Sampling seed.
    hypotheses : bool
        Return all hypotheses (multi-segment ``.seg.nrrd``) instead of the most frequent variant.
    """

    center: list[float]
    from_click: bool
    world: bool
    frame: str
    num_samples: int
    seed: int
    hypotheses: bool


def parse_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"parameter {name!r} must be true or false, got {value!r}.")


def _int(value: Any, name: str, low: int, high: int) -> int:
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


def parse_params(request: Mapping[str, Any]) -> InferParams:
    """Parse and check ``center`` / ``foreground``, ``world``, ``frame``, ``num_samples``, ``seed``, ``hypotheses``.

    ``center`` (REST) wins over ``foreground`` (MONAI Label's click list ``[[i, j, k], ...]`` as 3D Slicer sends
    it: the first point is the lesion centre). ``background`` clicks are checked but not used. Other keys the
    Slicer module sends (``label``, ``slice``, ``label_info``, ``client_id``, ``result_extension``, ...) are left to
    the caller.

    Raises
    ------
    ValueError
        Naming the offending parameter, or :data:`CLICK_MESSAGE` when there is neither ``center`` nor a
        ``foreground`` point.
    """
    fg = _points(request.get("foreground"), "foreground")
    _points(request.get("background"), "background")
    if request.get("center") is not None:
        center, from_click = _point(request["center"], "center"), False
    elif fg:
        center, from_click = fg[0], True
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
        num_samples=_int(request.get("num_samples", 16), "num_samples", 1, MAX_SAMPLES),
        seed=_int(request.get("seed", 0), "seed", 0, 2**63 - 1),
        hypotheses=parse_bool(request.get("hypotheses", False), "hypotheses"),
    )
