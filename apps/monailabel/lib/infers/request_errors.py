"""The ``probunet`` infer task's request errors: each answers its own HTTP status with one line (no traceback)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.utils.others.generic import name_to_device

from monai_probunet.model_loading import check_device

__all__ = ["ProbUNetRequestError", "bad_input_is_400", "check_result_dtype", "request_device"]


class ProbUNetRequestError(MONAILabelException):
    """A request the task cannot serve; ``status`` is the HTTP status the app answers with."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(MONAILabelError.INVALID_INPUT, msg)
        super().__setattr__("status", status)


@contextlib.contextmanager
def bad_input_is_400() -> Iterator[None]:
    """A ``ValueError`` of the library's pieces (a centre outside the image, an image smaller than the model's field,
    too many hypotheses for the memory) answers 400 with its message."""
    try:
        yield
    except ValueError as e:
        raise ProbUNetRequestError(str(e), status=400) from e


def request_device(value: Any) -> str:
    """The device of a request's ``device`` (MONAI Label's mapping: ``cuda`` is the CPU on a machine without CUDA).

    Raises:
        ProbUNetRequestError: 400 for a value that is not an available torch device.
    """
    if isinstance(value, (list, tuple)) and value:  # the task's options list: its first entry, the default
        value = value[0]
    if value is not None and not isinstance(value, str):
        raise ProbUNetRequestError(f"parameter 'device' must be a device name such as cpu or cuda, got {value!r}.")
    device = str(name_to_device(value or "cuda"))
    try:
        check_device(device)
    except ValueError as e:
        raise ProbUNetRequestError(f"parameter 'device': {e}", status=400) from e
    return device


def check_result_dtype(value: Any) -> None:
    """Refuse (400) a ``result_dtype`` that is not an integer type of numpy (3D Slicer sends ``uint8``)."""
    if value is None or value == "":
        return
    try:
        kind = np.dtype(value).kind
    except TypeError:
        kind = None
    if kind not in ("u", "i"):
        raise ProbUNetRequestError(
            f"parameter 'result_dtype' must be an integer type such as uint8 (the label's values), got {value!r}.")
