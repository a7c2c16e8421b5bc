"""The label as a DICOM Segmentation (SEG) of its source CT series (highdicom; no MONAI Label import).

The writer lives in the library (:mod:`monai_probunet.dicom_seg`, which the inference CLI uses too); this module
keeps the app's names. For a DICOMweb datastore the label lives on the grid of the NIfTI MONAI Label made from the
series, ``<cache>/images/<SeriesInstanceUID>.nii.gz``, beside the folder of the series' files
(:func:`find_source_series`); each source instance's pixels are located in that grid from the instance's own
geometry and the label is read there (a mismatch of more than :data:`GRID_TOLERANCE` voxel is refused rather than
resampled). The SEG references the source series, study, patient and frame of reference; one segment per returned
segment (overlapping for the hypotheses), labelled with the segment name.
"""

from __future__ import annotations

from monai_probunet.dicom_seg import (  # noqa: F401 -- re-exported: the app's names
    GRID_TOLERANCE,
    DicomSegError,
    find_source_series,
    label_to_frames,
    write_dicom_seg,
)

__all__ = ["DicomSegError", "find_source_series", "label_to_frames", "write_dicom_seg"]
