from .disk_format import DATALIST_NAME, SPLITS, load_datalist, patient_level_split, validate_datalist, write_nifti
from .lidc_phantom import generate_lidc_phantom
from .registry import BUILTIN_DATASETS, models_subfolder, prepare_dataset
from .scenes32 import (
    SWITCHABLE_CLASSES,
    RandClassFlipd,
    enumerate_modes,
    generate_scenes32,
    render_scene,
)
from .shapes import LESION_TYPES, generate_shapes, render_shapes_case
from .transforms import RandFieldOfViewd, RandGraderd

__all__ = [
    "SWITCHABLE_CLASSES",
    "RandClassFlipd",
    "enumerate_modes",
    "generate_scenes32",
    "render_scene",
    "BUILTIN_DATASETS",
    "DATALIST_NAME",
    "LESION_TYPES",
    "RandFieldOfViewd",
    "RandGraderd",
    "SPLITS",
    "generate_lidc_phantom",
    "generate_shapes",
    "load_datalist",
    "models_subfolder",
    "patient_level_split",
    "prepare_dataset",
    "render_shapes_case",
    "validate_datalist",
    "write_nifti",
]
