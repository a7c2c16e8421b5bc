"""Validation of the request parameters of the ``probunet`` infer task (no MONAI Label import: unit-testable)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_SAMPLES", "InferParams", "parse_params"]

#: upper bound on hypotheses per request (memory: S x voxels bytes for the label maps)
MAX_SAMPLES = 256
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off", "")


@dataclass(frozen=True)
class InferParams:
    """Parsed request parameters.

    Attributes
    ----------
    center : list of float or None
        Lesion centre (voxel indices of the loaded array, or mm with ``world``); ``None``: the image centre.
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

    center: list[float] | None
    world: bool
    frame: str
    num_samples: int
    seed: int
    hypotheses: bool


def _bool(value: Any, name: str) -> bool:
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


def parse_params(request: Mapping[str, Any]) -> InferParams:
    """Parse and check ``center`` / ``foreground``, ``world``, ``frame``, ``num_samples``, ``seed``, ``hypotheses``.

    ``center`` wins over ``foreground`` (MONAI Label's click list ``[[x, y, z], ...]``: its first point is the
    centre). Without either the image centre is used.

    Raises
    ------
    ValueError
        Naming the offending parameter.
    """
    center = None
    if request.get("center") is not None:
        center = _point(request["center"], "center")
    elif request.get("foreground"):
        fg = request["foreground"]
        if not isinstance(fg, (list, tuple)) or not isinstance(fg[0], (list, tuple)):
            raise ValueError(f"parameter 'foreground' must be a list of points [[x, y(, z)], ...], got {fg!r}.")
        center = _point(fg[0], "foreground[0]")
    frame = request.get("frame", "RAS")
    if not isinstance(frame, str) or frame.upper() not in ("RAS", "LPS"):
        raise ValueError(f"parameter 'frame' must be 'RAS' or 'LPS', got {frame!r}.")
    return InferParams(
        center=center,
        world=_bool(request.get("world", False), "world"),
        frame=frame.upper(),
        num_samples=_int(request.get("num_samples", 16), "num_samples", 1, MAX_SAMPLES),
        seed=_int(request.get("seed", 0), "seed", 0, 2**63 - 1),
        hypotheses=_bool(request.get("hypotheses", False), "hypotheses"),
    )
