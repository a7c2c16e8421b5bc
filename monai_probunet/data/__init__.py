from .disk_format import DATALIST_NAME, SPLITS, load_datalist, patient_level_split, validate_datalist, write_nifti
from .registry import BUILTIN_DATASETS, prepare_dataset
from .shapes import LESION_TYPES, generate_shapes, render_shapes_case
from .transforms import RandGraderd

__all__ = [
    "BUILTIN_DATASETS",
    "DATALIST_NAME",
    "LESION_TYPES",
    "RandGraderd",
    "SPLITS",
    "generate_shapes",
    "load_datalist",
    "patient_level_split",
    "prepare_dataset",
    "render_shapes_case",
    "validate_datalist",
    "write_nifti",
]
