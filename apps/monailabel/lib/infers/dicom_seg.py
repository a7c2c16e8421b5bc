"""The label as a DICOM Segmentation (SEG) of its source CT series (highdicom; no MONAI Label import).

The label lives on the grid of the image the model ran on (for a DICOMweb datastore: the NIfTI MONAI Label made
from the series, ``<cache>/images/<SeriesInstanceUID>.nii.gz``, beside the folder of the series' files). Each source
instance's pixels are located in that grid from the instance's own geometry (``ImagePositionPatient``,
``ImageOrientationPatient``, ``PixelSpacing``) and the label is read there (the grids coincide: a mismatch of more
than 0.01 voxel is refused rather than resampled). The SEG references the source series, study, patient and frame
of reference; one segment per returned segment (overlapping for the hypotheses), labelled with the segment name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DicomSegError", "find_source_series", "label_to_frames", "write_dicom_seg"]

#: largest tolerated distance (in voxels) between a source pixel centre and a label voxel centre
GRID_TOLERANCE = 0.01


class DicomSegError(ValueError):
    """The label cannot be written as a DICOM SEG of a source series."""


def find_source_series(image_path: str | os.PathLike) -> Path | None:
    """The folder of DICOM files the image came from: the image itself if it is a folder, else the sibling folder
    named like the file without ``.nii.gz`` / ``.nii`` / ``.nrrd`` (MONAI Label's DICOMweb cache); else ``None``."""
    p = Path(image_path)
    if p.is_dir():
        return p
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        if p.name.endswith(suffix):
            d = p.with_name(p.name[: -len(suffix)])
            return d if d.is_dir() else None
    return None


def _read_series(folder: Path) -> list[Any]:
    import pydicom

    datasets = []
    for f in sorted(folder.iterdir()):
        if f.is_file():
            try:
                datasets.append(pydicom.dcmread(str(f)))
            except Exception:  # noqa: BLE001 -- not a DICOM file: skipped
                continue
    if not datasets:
        raise DicomSegError(f"no DICOM files in {folder}.")
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) != 1:
        raise DicomSegError(f"{folder} holds {len(series)} series; a DICOM SEG needs exactly one.")
    return datasets


def label_to_frames(labels: np.ndarray, affine_ras: np.ndarray, datasets: Sequence[Any]) -> np.ndarray:
    """Read the label at each source instance's pixels.

    Args:
        labels: ``L x I x J x K`` (L segments, 0/1) on the image grid.
        affine_ras: ``4 x 4`` voxel -> RAS mm of that grid.
        datasets: The source instances.

    Returns:
        numpy.ndarray: ``N x rows x cols x L`` bool, one frame per source instance (in ``datasets`` order).
    """
    inv = np.linalg.inv(np.asarray(affine_ras, dtype=np.float64))
    frames = []
    for ds in datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        lps = ipp[None, None] + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        vox = ras @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(vox)
        if np.abs(vox - idx).max() > GRID_TOLERANCE:
            raise DicomSegError(
                f"instance {ds.SOPInstanceUID}: its pixels are {np.abs(vox - idx).max():.3f} voxels off the label grid."
            )
        idx = idx.astype(np.int64)
        shape = np.array(labels.shape[1:])
        if (idx < 0).any() or (idx >= shape).any():
            raise DicomSegError(f"instance {ds.SOPInstanceUID} lies outside the label grid {tuple(shape)}.")
        frames.append(np.moveaxis(labels[:, idx[..., 0], idx[..., 1], idx[..., 2]], 0, -1) > 0)
    return np.stack(frames)


def write_dicom_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    affine_ras: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    series_dir: str | os.PathLike,
    series_description: str = "Probabilistic U-Net lesion",
    content_creator: str | None = None,
) -> dict[str, str]:
    """Write a BINARY DICOM SEG of ``labels`` referencing the series in ``series_dir``.

    Args:
        path: Output ``.dcm`` (written to a temporary sibling, then moved into place).
        labels: ``L x I x J x K`` 0/1 (segment ``l`` = ``segments[l]``).
        affine_ras: ``4 x 4`` voxel -> RAS mm of the label grid.
        segments: ``name`` (the SEG's SegmentLabel, at most 64 characters) and optionally ``color`` (RGB in [0, 1]).
        series_dir: The source series' files.
        content_creator: The person whose label this is (``ContentCreatorName``; the segments are then
            ``SEMIAUTOMATIC``: a person's outline, possibly edited from the model's); ``None`` for the model's own
            answer (``AUTOMATIC``).

    Returns:
        dict: ``SeriesInstanceUID``, ``SOPInstanceUID`` of the SEG and ``ReferencedSeriesInstanceUID``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    datasets = _read_series(Path(series_dir))
    if len(segments) != labels.shape[0]:
        raise DicomSegError(f"{labels.shape[0]} label layers but {len(segments)} segments.")
    pixels = label_to_frames(labels, affine_ras, datasets)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="monai-probunet", version="0.1.0", family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=str(seg["name"])[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC if content_creator is None
            else hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=str(seg["name"])[:64],
        )
        for i, seg in enumerate(segments)
    ]
    seg_ds = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=300,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="monai-probunet",
        manufacturer_model_name="Probabilistic U-Net",
        software_versions="0.1.0",
        device_serial_number="none",
        series_description=series_description[:64],
        omit_empty_frames=False,
        content_creator_name=content_creator,
    )
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        seg_ds.save_as(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {
        "SeriesInstanceUID": str(seg_ds.SeriesInstanceUID),
        "SOPInstanceUID": str(seg_ds.SOPInstanceUID),
        "ReferencedSeriesInstanceUID": str(datasets[0].SeriesInstanceUID),
    }
