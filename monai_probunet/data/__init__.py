"""Datasets: the built-in generators, the on-disk format and the data transforms.

The names below are imported from their modules on first use (PEP 562), so that a command that needs one module
(``python -m monai_probunet.data.raters``, whose argument errors need neither MONAI nor torch) does not import them
all.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the submodule that defines it
_SOURCES = {
    "DATALIST_NAME": "disk_format",
    "SPLITS": "disk_format",
    "load_datalist": "disk_format",
    "patient_level_split": "disk_format",
    "validate_datalist": "disk_format",
    "write_nifti": "disk_format",
    "generate_lidc_phantom": "lidc_phantom",
    "BUILTIN_DATASETS": "registry",
    "models_subfolder": "registry",
    "prepare_dataset": "registry",
    "SWITCHABLE_CLASSES": "scenes32",
    "RandClassFlipd": "scenes32",
    "enumerate_modes": "scenes32",
    "generate_scenes32": "scenes32",
    "render_scene": "scenes32",
    "LESION_TYPES": "shapes",
    "generate_shapes": "shapes",
    "render_shapes_case": "shapes",
    "RandFieldOfViewd": "transforms",
    "RandGraderd": "transforms",
}

__all__ = [
    "BUILTIN_DATASETS",
    "DATALIST_NAME",
    "LESION_TYPES",
    "SPLITS",
    "SWITCHABLE_CLASSES",
    "RandClassFlipd",
    "RandFieldOfViewd",
    "RandGraderd",
    "enumerate_modes",
    "generate_lidc_phantom",
    "generate_scenes32",
    "generate_shapes",
    "load_datalist",
    "models_subfolder",
    "patient_level_split",
    "prepare_dataset",
    "render_scene",
    "render_shapes_case",
    "validate_datalist",
    "write_nifti",
]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SOURCES))
