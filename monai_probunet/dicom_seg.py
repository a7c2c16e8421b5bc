"""A label as a DICOM Segmentation (SEG) of its source CT series or slice (highdicom).

The label lives on the grid of the image the model ran on: the DICOM series (or slice) itself as MONAI loaded it,
or a NIfTI made from the series (MONAI Label's DICOMweb cache: ``<cache>/images/<SeriesInstanceUID>.nii.gz``
beside the folder of the series' files). Each source instance's pixels are located in that grid from the
instance's own geometry (``ImagePositionPatient``, ``ImageOrientationPatient``, ``PixelSpacing``) and the label is
read there (the grids coincide: a mismatch of more than :data:`GRID_TOLERANCE` voxel is refused rather than
resampled). The SEG references the source series, study, patient and frame of reference; one segment per label
layer (overlapping for hypotheses), labelled with the segment name. Works with pydicom 2 + highdicom 0.22 and with
pydicom 3 + a current highdicom.

A segment's empty frames are left out (highdicom's default; a SEG whose segments are all empty keeps the frames it
was given). Where the caller knows the part of the grid the label can occupy (``occupied``: a 3-D result's lesion
box, a 2-D result's slice), highdicom is given only the frames of the source instances that meet it, with those
instances' plane positions, and every instance of the series as its source images: it matches each frame to its
instance by position (the frame's ``ReferencedSOPInstanceUID``, spatial locations preserved) and the SEG references
the whole series, as a viewer expects. Its frames are the non-empty ones that the whole series' frames would give,
but a 700-slice series' 700 x rows x cols x segments frames are neither made nor scanned. (A label that is empty
everywhere keeps the frames of the instances meeting ``occupied``, not every instance's.) highdicom before 0.26 does
not match given plane positions to the source instances: there every instance's frame is given, as without
``occupied``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .dicom_series import series_files

__all__ = [
    "GRID_TOLERANCE",
    "DicomSegError",
    "check_one_series",
    "check_seg_source",
    "find_source_series",
    "label_to_frames",
    "read_dicom_seg",
    "read_series",
    "write_dicom_seg",
]

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


def read_series(source: str | os.PathLike, headers_only: bool = False) -> list[Any]:
    """The source instances: every DICOM file of a folder (files pydicom cannot read are skipped), or one file.

    Args:
        source: A folder holding one DICOM series, or one DICOM file (a slice).
        headers_only: Read each file up to its pixel data (``stop_before_pixels``): for checks of the headers.

    Returns:
        list of pydicom.Dataset: the instances (folder: file-name order).

    Raises:
        DicomSegError: No DICOM file, more than one series, or an unreadable single file.
    """
    import pydicom

    path = Path(source)
    if path.is_file():
        try:
            return [pydicom.dcmread(str(path), stop_before_pixels=headers_only)]
        except Exception as e:  # pydicom raises many types for a file that is not DICOM
            raise DicomSegError(f"{path} is not a readable DICOM file ({type(e).__name__}).") from e
    if not path.is_dir():
        raise DicomSegError(f"{path} is neither a DICOM file nor a folder of a DICOM series.")
    datasets = []
    for f in series_files(path):
        try:
            datasets.append(pydicom.dcmread(str(f), stop_before_pixels=headers_only))
        except Exception:  # noqa: BLE001, S112 -- not a DICOM file: skipped
            continue
    return check_one_series(datasets, path)


def check_one_series(datasets: Sequence[Any], source: str | os.PathLike) -> list[Any]:
    """The instances of a series folder (:func:`read_series`), refused unless they are one series.

    Raises:
        DicomSegError: No instance, or more than one ``SeriesInstanceUID``.
    """
    if not datasets:
        raise DicomSegError(f"no DICOM files in {source}.")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise DicomSegError(f"{source} holds {len(series)} series; a DICOM SEG needs exactly one.")
    return list(datasets)


def check_seg_source(datasets: Sequence[Any], source: str | os.PathLike) -> None:
    """Refuse a source that a DICOM SEG cannot reference, in one line naming it.

    A SEG of a CT series places its frames in the source's frame of reference and references each source instance;
    highdicom refuses a source without a Frame of Reference UID in a message that names neither file nor tag.

    Args:
        datasets: The source instances (:func:`read_series`; headers suffice).
        source: The series folder or DICOM file they came from (named in the message).

    Raises:
        DicomSegError: An instance lacks the Frame of Reference UID or one of the UIDs a SEG references.
    """
    required = {
        "FrameOfReferenceUID": "Frame of Reference UID (0020,0052)",
        "StudyInstanceUID": "Study Instance UID (0020,000D)",
        "SeriesInstanceUID": "Series Instance UID (0020,000E)",
        "SOPInstanceUID": "SOP Instance UID (0008,0018)",
    }
    for keyword, tag in required.items():
        if any(not str(ds.get(keyword, "") or "").strip() for ds in datasets):
            raise DicomSegError(f"{source} has no {tag}, which a DICOM SEG of it must reference.")


def _grid_index(ds: Any, inv: np.ndarray, shape: Sequence[int]) -> tuple[tuple[Any, ...], bool]:
    """Where instance ``ds``'s pixels lie on the label grid (inverse affine ``inv``, ``shape``), from its
    ``ImagePositionPatient``, ``ImageOrientationPatient`` and ``PixelSpacing``.

    A pixel's voxel is an affine function of its row and column. Where every pixel lies within
    :data:`GRID_TOLERANCE` of a voxel centre by that function's bound (the grids coincide, as for the image the
    model ran on), the voxels follow by integer steps: slices where rows and columns run along two axes of the grid
    (``grid[index]`` is then a view); otherwise each pixel is located and checked.

    Returns:
        ``(index, swapped)``: ``grid[index]`` is the instance's ``rows x cols`` pixels of a 3-D ``grid``
        (``cols x rows`` where ``swapped``); with a leading layer axis, ``grid[(slice(None), *index)]``.

    Raises:
        DicomSegError: The instance's pixels lie off the grid or outside it.
    """
    rows, cols = int(ds.Rows), int(ds.Columns)
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    flip = np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
    origin = inv[:3, :3] @ (ipp * flip) + inv[:3, 3]  # the voxel of pixel (0, 0), then a row's and a column's step
    step_r, step_c = inv[:3, :3] @ (dr * iop[3:] * flip), inv[:3, :3] @ (dc * iop[:3] * flip)
    o, sr, sc = np.rint(origin), np.rint(step_r), np.rint(step_c)
    drift = np.abs(origin - o) + (rows - 1) * np.abs(step_r - sr) + (cols - 1) * np.abs(step_c - sc)
    r, c = np.arange(rows)[:, None, None], np.arange(cols)[None, :, None]
    outside = DicomSegError(f"instance {ds.SOPInstanceUID} lies outside the label grid {tuple(shape)}.")
    if drift.max() > GRID_TOLERANCE:  # each pixel located and checked
        vox = origin + r * step_r + c * step_c
        idx = np.rint(vox)
        if np.abs(vox - idx).max() > GRID_TOLERANCE:
            raise DicomSegError(
                f"instance {ds.SOPInstanceUID}: its pixels are {np.abs(vox - idx).max():.3f} voxels off the label "
                "grid."
            )
        idx = idx.astype(np.int64)
        if (idx < 0).any() or (idx >= np.asarray(shape)).any():
            raise outside
        return (idx[..., 0], idx[..., 1], idx[..., 2]), False
    corners = np.array([o + a * (rows - 1) * sr + b * (cols - 1) * sc for a in (0, 1) for b in (0, 1)])
    if (corners < 0).any() or (corners >= np.asarray(shape)).any():  # an affine map's extremes are at the corners
        raise outside
    ar, ac = np.flatnonzero(sr), np.flatnonzero(sc)
    if len(ar) == len(ac) == 1 and ar[0] != ac[0] and abs(sr[ar[0]]) == abs(sc[ac[0]]) == 1:
        index: list[Any] = [int(v) for v in o]  # rows and columns along two axes of the grid
        for axis, step, n in ((ar[0], int(sr[ar[0]]), rows), (ac[0], int(sc[ac[0]]), cols)):
            stop = int(o[axis]) + step * n
            index[axis] = slice(int(o[axis]), None if stop < 0 else stop, step)
        return tuple(index), bool(ar[0] > ac[0])
    idx = (o + r * sr + c * sc).astype(np.int64)
    return (idx[..., 0], idx[..., 1], idx[..., 2]), False


def _matches_plane_positions(version: str) -> bool:
    """Whether highdicom ``version`` matches the plane positions it is given to the source instances (0.26 on)."""
    try:
        return tuple(int(v) for v in version.split(".")[:2]) >= (0, 26)
    except ValueError:
        return False


def _instances_meeting(
    datasets: Sequence[Any], affine_ras: np.ndarray, shape: Sequence[int], box: Sequence[slice]
) -> list[Any]:
    """The instances of ``datasets`` with a pixel in ``box`` (one slice per axis of the label grid ``shape``, step 1).

    Raises:
        DicomSegError: An instance's pixels lie off the label grid or outside it (:func:`_grid_index`).
    """
    inv = np.linalg.inv(np.asarray(affine_ras, dtype=np.float64))
    bounds = [b.indices(int(n))[:2] for b, n in zip(box, shape)]
    meeting = []
    for ds in datasets:
        index, _ = _grid_index(ds, inv, shape)
        if any(isinstance(i, np.ndarray) for i in index):  # each pixel located: voxel indices per axis
            inside = np.ones(np.shape(index[0]), bool)
            for i, (lo, hi) in zip(index, bounds):
                inside &= (i >= lo) & (i < hi)
            hit = bool(inside.any())
        else:  # per axis an int or a slice of step +-1 (rows and columns along two axes of the grid)
            spans = [(i, i) if isinstance(i, (int, np.integer)) else _span(i, int(n)) for i, n in zip(index, shape)]
            hit = all(first <= hi - 1 and last >= lo for (first, last), (lo, hi) in zip(spans, bounds))
        if hit:
            meeting.append(ds)
    return meeting


def _span(part: slice, n: int) -> tuple[int, int]:
    """The lowest and highest index of a (non-empty) slice of an axis of length ``n``."""
    values = range(*part.indices(n))
    return min(values[0], values[-1]), max(values[0], values[-1])


def label_to_frames(labels: np.ndarray, affine_ras: np.ndarray, datasets: Sequence[Any]) -> np.ndarray:
    """Read the label at each source instance's pixels (:func:`_grid_index`).

    Args:
        labels: ``L x I x J x K`` (L segments, 0/1) on the image grid.
        affine_ras: ``4 x 4`` voxel -> RAS mm of that grid.
        datasets: The source instances.

    Returns:
        numpy.ndarray: ``N x rows x cols x L`` bool, one frame per source instance (in ``datasets`` order).

    Raises:
        DicomSegError: An instance's pixels lie off the label grid or outside it.
    """
    inv = np.linalg.inv(np.asarray(affine_ras, dtype=np.float64))

    def frame(ds: Any) -> np.ndarray:
        index, swapped = _grid_index(ds, inv, labels.shape[1:])
        part = labels[(slice(None), *index)]  # L x rows x cols (L x cols x rows where swapped)
        return np.moveaxis(part.transpose(0, 2, 1) if swapped else part, 0, -1) > 0

    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) != 1:
        return np.stack([frame(ds) for ds in datasets])
    out = np.empty((len(datasets), *sizes.pop(), labels.shape[0]), bool)  # filled frame by frame, not stacked
    for i, ds in enumerate(datasets):
        out[i] = frame(ds)
    return out


def read_dicom_seg(
    seg: Any, series_dir: str | os.PathLike, affine_ras: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, list[str]]:
    """A DICOM SEG of the series in ``series_dir`` read back onto the image grid (the inverse of
    :func:`write_dicom_seg`): highdicom gives each source instance's frame, placed at that instance's own pixels.

    Args:
        seg: The SEG (a pydicom Dataset).
        series_dir: The source series' folder, or one DICOM file (:func:`read_series`).
        affine_ras: ``4 x 4`` voxel -> RAS mm of the image grid.
        shape: The image grid's ``I x J x K``.

    Returns:
        ``(L x I x J x K uint8 0/1, L segment labels)``, in segment number order.

    Raises:
        DicomSegError: The SEG is not one of this series, or its frames lie off the grid.
    """
    import highdicom as hd

    datasets = read_series(series_dir, headers_only=True)
    try:
        parsed = hd.seg.Segmentation.from_dataset(seg)
        numbers = sorted(int(d.SegmentNumber) for d in parsed.SegmentSequence)
        pixels = parsed.get_pixels_by_source_instance(
            [str(ds.SOPInstanceUID) for ds in datasets], segment_numbers=numbers,
            assert_missing_frames_are_empty=True,
        )  # N x rows x cols x L
    except (ValueError, KeyError, AttributeError) as e:
        raise DicomSegError(f"SEG {seg.get('SeriesInstanceUID', '?')} is not readable as a SEG of the series in "
                            f"{series_dir}: {e}") from e
    inv = np.linalg.inv(np.asarray(affine_ras, dtype=np.float64))
    labels = np.zeros((len(numbers), *shape), np.uint8)
    for ds, frame in zip(datasets, pixels):
        index, swapped = _grid_index(ds, inv, shape)
        layers = np.moveaxis(frame > 0, -1, 0)  # L x rows x cols
        labels[(slice(None), *index)] = layers.transpose(0, 2, 1) if swapped else layers
    names = {int(d.SegmentNumber): str(d.SegmentLabel) for d in parsed.SegmentSequence}
    return labels, [names[n] for n in numbers]


def write_dicom_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    affine_ras: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    series_dir: str | os.PathLike,
    series_description: str = "Probabilistic U-Net lesion",
    content_creator: str | None = None,
    occupied: Sequence[slice] | None = None,
    datasets: Sequence[Any] | None = None,
) -> dict[str, str]:
    """Write a BINARY DICOM SEG of ``labels`` referencing the series (or slice) in ``series_dir``.

    Args:
        path: Output ``.dcm`` (written to a temporary sibling, then moved into place).
        labels: ``L x I x J x K`` 0/1 (segment ``l`` = ``segments[l]``); a slice's label is ``L x I x J x 1``.
        affine_ras: ``4 x 4`` voxel -> RAS mm of the label grid.
        segments: ``name`` (the SEG's SegmentLabel, at most 64 characters) and optionally ``color`` (RGB in [0, 1]).
        series_dir: The source series' folder, or one DICOM file (:func:`read_series`).
        series_description: The SEG's ``SeriesDescription`` (at most 64 characters).
        content_creator: The person whose label this is (``ContentCreatorName``; the segments are then
            ``SEMIAUTOMATIC``: a person's outline, possibly edited from the model's); ``None`` for the model's own
            answer (``AUTOMATIC``).
        occupied: One slice per axis of ``I x J x K`` (step 1): every layer is zero outside this box (e.g.
            :attr:`~monai_probunet.hypotheses.Hypotheses.occupied_box`). Only the frames of the source instances
            that meet it are made and given to highdicom (the module's docstring); ``None``: every instance's.
        datasets: The source instances' headers as :func:`read_series` reads them (``headers_only``), where the
            caller holds them already; ``None``: read from ``series_dir``.

    Returns:
        dict: ``SeriesInstanceUID``, ``SOPInstanceUID`` of the SEG and ``ReferencedSeriesInstanceUID``.

    Raises:
        DicomSegError: The source cannot be read as one series, the label layers and segments differ in number,
            or the label's grid is not the source's.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if datasets is None:  # highdicom reads the sources' attributes, not their pixels
        datasets = read_series(series_dir, headers_only=True)
    check_seg_source(datasets, series_dir)
    if len(segments) != labels.shape[0]:
        raise DicomSegError(f"{labels.shape[0]} label layers but {len(segments)} segments.")
    framed = list(datasets)
    if occupied is not None and _matches_plane_positions(hd.__version__):
        framed = _instances_meeting(datasets, affine_ras, labels.shape[1:], occupied) or framed  # none: all
    pixels = label_to_frames(labels, affine_ras, framed)  # N x rows x cols x L, N = the instances framed
    positions = {}
    if len(framed) < len(datasets):  # highdicom matches each frame to its instance by position
        positions["plane_positions"] = hd.utils.get_plane_positions_of_series(framed)
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
        content_creator_name=content_creator,
        **positions,
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
