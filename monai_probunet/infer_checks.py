"""Checks of the inference CLI's inputs made before any image is loaded or any hypothesis drawn.

Each raises ``ValueError`` with one line naming the option or file (or returns why a result cannot be written), so
that ``python -m monai_probunet.infer`` refuses a run that would fail late or exhaust the memory: the image's plane
resampled to the model's spacing (from the header alone), a crop the network cannot run on, a DICOM source that no
DICOM SEG can reference. Heavy imports happen inside the functions (the CLI's ``--help`` stays instant).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_RESAMPLED_PIXELS", "as_given", "as_pair", "check_resampled_size", "check_roi_size", "dicom_headers",
    "dicom_source", "plane_geometry", "seg_source_problem",
]

#: the most in-plane pixels an image may have once resampled to the model's spacing (``--spacing``): 8192 x 8192, about
#: 3 GB while it is resampled, padded and cropped (measured: about 42 bytes a pixel); a 512 px CT slice of 0.7 mm
#: reaches it at 0.044 mm, more than 20 times finer than the shipped model's 1 mm
MAX_RESAMPLED_PIXELS = 2**26


def dicom_headers(source: Path) -> list | None:
    """The headers of a DICOM source's files (a series folder's DICOM files, or the one file), read once up to their
    pixel data for the checks, the image loader and the DICOM SEG (:func:`~monai_probunet.dicom_series.read_headers`);
    ``None`` where there is none or one cannot be read (the image loader names the problem)."""
    from .dicom_series import read_headers, series_files

    files = series_files(source) if source.is_dir() else [source]
    if not files:
        return None
    try:
        return read_headers(files, str(source))
    except ValueError:
        return None


def seg_source_problem(source: Path, headers: Sequence | None = None) -> str | None:
    """Why no DICOM SEG can reference ``source`` (:func:`~monai_probunet.dicom_seg.check_seg_source`), or ``None``;
    a source that is not one readable series is left to the image loader, which names what is wrong with it.
    ``headers``: its files' headers if read already (:func:`dicom_headers`)."""
    from .dicom_seg import DicomSegError, check_one_series, check_seg_source, read_series

    try:
        datasets = read_series(source, headers_only=True) if headers is None else check_one_series(headers, source)
    except DicomSegError:
        return None
    try:
        check_seg_source(datasets, source)
    except DicomSegError as e:
        return str(e)
    return None


def dicom_source(image: str) -> Path | None:
    """The DICOM the image is read from (a series folder, or one DICOM file), ``None`` for NIfTI and other files."""
    from .dicom_series import is_dicom

    path = Path(image)
    if path.is_dir():
        return path
    if path.name.lower().endswith((".nii", ".nii.gz")) or not is_dicom(path):
        return None
    return path


def as_pair(value, cast: type) -> tuple:
    """An option's one value or two values as a pair of ``cast`` (``0.5`` -> ``(0.5, 0.5)``)."""
    vals = list(value) if isinstance(value, (list, tuple)) else [value, value]
    return tuple(cast(v) for v in vals)


def as_given(value) -> str:
    """An option's value as it was given (``0.5``, ``0.5 0.7``)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def plane_geometry(image: str, header: Any = None) -> tuple[list[int], list[float]] | None:
    """The in-plane size (px) and pixel spacing (mm) of ``image`` from its header alone (no pixel data), in the
    order of the loaded array's axes; ``None`` if the header cannot be read (loading the image names the problem).

    NIfTI: the header's shape and affine (a volume's slice axis is the one most aligned with the world S axis, as
    the inference path takes it); DICOM (one file, or the first file of a series folder): ``Columns`` x ``Rows`` at
    ``PixelSpacing`` (MONAI loads the array as ``column, row``); ``header``: that file's header if read already.
    """
    path = Path(image)
    try:
        if path.is_dir() or not path.name.endswith((".nii", ".nii.gz")):
            import pydicom

            from .dicom_series import is_dicom

            if header is None:
                files = sorted(f for f in path.iterdir() if f.is_file() and is_dicom(f)) if path.is_dir() else [path]
                if not files or not is_dicom(files[0]):
                    return None
                header = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
            row_mm, col_mm = (float(v) for v in header.PixelSpacing)
            return [int(header.Columns), int(header.Rows)], [col_mm, row_mm]
        import nibabel as nib
        import numpy as np

        from .ct_io import _slice_axis

        img = nib.load(str(path))
        shape = [int(n) for n in img.shape[:3]]
        sizes = np.linalg.norm(np.asarray(img.affine, dtype=float)[:3, : len(shape)], axis=0).tolist()
        if len(shape) == 3:
            axis = _slice_axis(img.affine, 3)
            del shape[axis], sizes[axis]
        return (shape, sizes) if len(shape) == 2 else None
    except Exception:  # noqa: BLE001 -- unreadable, not an image, ...: loading the image names it
        return None


def check_resampled_size(
    images: Sequence[str], spacing, option: str, headers: Mapping[str, Any] | None = None
) -> None:
    """Refuse a model spacing at which an image's plane would have more than :data:`MAX_RESAMPLED_PIXELS` pixels (the
    inference path resamples the whole plane to it), estimated from the headers before any image is loaded.

    Args:
        images: the images of the run (one whose header cannot be read is left to the loader).
        spacing: the model's in-plane spacing in mm (one value or a pair).
        option: where the spacing came from, for the message (``--spacing`` or ``infer_spacing``).
        headers: image -> the DICOM header of its (first) file, where read already.

    Raises:
        ValueError: one line naming ``option``, the image, its extent and the resampled size.
    """
    model_mm = as_pair(spacing, float)
    for image in images:
        geometry = plane_geometry(image, (headers or {}).get(image))
        if geometry is None:
            continue
        shape, sizes = geometry
        px = [math.ceil(round(n * mm / s, 6)) for n, mm, s in zip(shape, sizes, model_mm)]
        if math.prod(px) > MAX_RESAMPLED_PIXELS:
            extent = " x ".join(f"{n * mm:.1f}" for n, mm in zip(shape, sizes))
            raise ValueError(
                f"{option} {as_given(spacing)}: {image} ({extent} mm in-plane) would be resampled "
                f"to {px[0]} x {px[1]} px, more than {MAX_RESAMPLED_PIXELS} (8192 x 8192); give the model's pixel "
                "spacing in mm (the shipped model: 1)."
            )


def check_roi_size(model, roi, device: str, option: str) -> None:
    """Refuse a crop the network cannot run on: it halves the crop at every level and its deepest level needs more
    than one pixel (the shipped model, 3 halvings: at least 16 px per side). The crop is tried with one hypothesis
    on an empty image; the rule in the message is the smallest square crop (a power of 2) the network runs on.

    Args:
        model: the loaded network (``sample``).
        roi: the crop in px (one value or a pair).
        device: where the model is.
        option: the option the crop came from, for the message (``--roi-size``).

    Raises:
        ValueError: one line naming ``option`` and the smallest crop the network runs on.
    """
    import torch

    from .hypotheses_inferer import HypothesesInferer

    def runs(size: tuple[int, ...]) -> bool:
        try:
            HypothesesInferer(num_samples=1)(torch.zeros((1, 1, *size), device=device), model)
        except (RuntimeError, ValueError, TypeError):
            return False
        return True

    size = as_pair(roi, int)
    if runs(tuple(min(n, 1024) for n in size)):  # a side beyond 1024 px is never too small (and not run here)
        return
    smallest = next((n for n in (2**k for k in range(1, 11)) if runs((n, n))), None)
    if smallest is None:  # no crop size runs: not a matter of the size, the run itself names the problem
        return
    raise ValueError(
        f"{option} {as_given(roi)}: the network cannot run on a crop of {size[0]} x {size[1]} px; it halves the crop "
        f"at each level and needs at least {smallest} px per side."
    )
