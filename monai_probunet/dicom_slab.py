"""Read only the slices of a DICOM series that a click needs, on the whole series' grid.

A 2-D answer uses the one axial slice through the click, a 3-D answer the slices the lesion is followed into (at
most ``max_extent_mm`` to either side). A thin-slice series holds hundreds of files: reading all their pixels
dominated a click's time and memory. :class:`SeriesSlab` picks the files near the click from the headers
(:func:`~monai_probunet.dicom_series.read_headers`), :func:`~monai_probunet.ct_io.load_ct` reads those with MONAI's
``PydicomReader`` and places them in a volume of the whole series' shape and affine (:meth:`SeriesSlab.place`), so
every coordinate, check and output is the one a whole read gives. The slices not read are zeros that the system
never allocates (the volume is laid out slice by slice); nothing reads them.

The slab applies to a series whose slices are axial (their normal closest to the patient's S axis): the model's
plane is then one stored slice. For a coronal or sagittal series the axial plane crosses every file, and the whole
series is read.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import orientation_ras_lps

from .dicom_series import slice_position

__all__ = ["ReadNear", "SeriesSlab", "plan_slab"]

#: read the whole series when the slab would hold more than this share of its files anyway
WHOLE_SERIES_SHARE = 0.8
#: ``PydicomReader``'s ``swap_ij`` (its default, as ``load_ct`` reads): the array's first two axes swapped
_SWAP_IJ = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])


@dataclass(frozen=True)
class ReadNear:
    """Where a click is and how far along the slice normal its answer reaches.

    Args:
        center: the click, as :func:`~monai_probunet.ct_io.resolve_center` takes it (3 voxel coordinates of the
            loaded volume, or world millimetres with ``world``).
        world: ``center`` is in world millimetres.
        frame: ``"RAS"`` or ``"LPS"``, the frame of a world ``center``.
        mm_each_side: how far from the click's slice the answer reads (0: that slice alone).
    """

    center: Sequence[float]
    world: bool = False
    frame: str = "RAS"
    mm_each_side: float = 0.0


@dataclass(frozen=True)
class SeriesSlab:
    """The files of a series to read and where they go in the whole series' volume.

    Attributes:
        files: the files to read (a run of consecutive slices, at least 2).
        regex: MONAI ``PydicomReader``'s ``fname_regex`` that matches these files of the folder, and no other.
        start: index of the first file read along the restacked slice axis (the viewer's slice order).
        num_slices: the series' slice count.
        affine: the whole series' voxel -> RAS affine in the reader's (``InstanceNumber``) order, as
            ``PydicomReader`` computes it for the whole series (``4 x 4`` float64).
    """

    files: tuple[Path, ...]
    regex: str
    start: int
    num_slices: int
    affine: np.ndarray

    def place(self, part: MetaTensor, descending: bool) -> MetaTensor:
        """The whole series' volume holding ``part`` (the files read, restacked along the normal by ``load_ct``).

        Args:
            part: ``1 x H x W x n`` of the :attr:`files`, slice ``k`` the ``k``-th along the normal.
            descending: the series is numbered against its normal (``load_ct`` restacked it): the affine is turned
                as ``load_ct`` turns a whole series' affine.

        Returns:
            ``1 x H x W x N`` float32 ``MetaTensor`` with the whole series' affine; zeros outside the slab, laid out
            slice by slice (slice ``k`` one contiguous block), so that the zeros take no memory.
        """
        n_read = int(part.shape[-1])
        height, width = int(part.shape[1]), int(part.shape[2])
        zeros = torch.from_numpy(np.zeros((self.num_slices, height, width), np.float32))  # calloc: pages on use
        volume = zeros.permute(1, 2, 0)[None]
        volume[..., self.start : self.start + n_read] = part.as_tensor()
        affine = torch.as_tensor(self.affine, dtype=torch.float64)
        if descending:  # as ct_io's restacking turns a whole series read in InstanceNumber order
            flip = torch.eye(4, dtype=torch.float64)
            flip[2, 2], flip[2, 3] = -1.0, float(self.num_slices - 1)
            affine = affine @ flip
        meta = {k: v for k, v in part.meta.items() if k not in ("affine", "00200032", "lastImagePositionPatient")}
        meta["original_affine"] = affine.numpy()
        meta["spatial_shape"] = (height, width, self.num_slices)
        return MetaTensor(volume, affine=affine, meta=meta)


def _floats(value: Any, count: int) -> list[float]:
    out = [float(v) for v in value]
    if len(out) != count:
        raise ValueError
    return out


def _series_affine(first: Any, last: Any, num_slices: int) -> np.ndarray:
    """``PydicomReader``'s affine of a whole series from its first and last headers in ``InstanceNumber`` order:
    the rows and columns of the first slice, the slice axis from the first to the last position, RAS, the first two
    axes swapped (the reader's default ``swap_ij``)."""
    rx, ry, rz, cx, cy, cz = _floats(first.ImageOrientationPatient, 6)
    sx, sy, sz = _floats(first.ImagePositionPatient, 3)
    dr, dc = _floats(first.PixelSpacing, 2)
    t1, t2, t3 = _floats(last.ImagePositionPatient, 3)
    affine = np.eye(4)
    affine[0, 0], affine[0, 1], affine[0, 3] = cx * dr, rx * dc, sx
    affine[1, 0], affine[1, 1], affine[1, 3] = cy * dr, ry * dc, sy
    affine[2, 0], affine[2, 1], affine[2, 3] = cz * dr, rz * dc, sz
    affine[0, 2] = (t1 - sx) / (num_slices - 1)
    affine[1, 2] = (t2 - sy) / (num_slices - 1)
    affine[2, 2] = (t3 - sz) / (num_slices - 1)
    return orientation_ras_lps(affine) @ _SWAP_IJ


def plan_slab(folder: Path, files: Sequence[Path], headers: Sequence[Any], descending: bool,
              near: ReadNear) -> SeriesSlab | None:
    """The slab of a checked series (:func:`~monai_probunet.dicom_series.check_ct_dicom`) that ``near`` needs.

    Args:
        folder: the series folder as it is given to the reader.
        files: its DICOM files; ``headers`` their headers, in the same order.
        descending: the series is numbered against its slice normal (``check_ct_dicom``'s result).
        near: the click and how far its answer reaches.

    Returns:
        the slab, or ``None`` where the whole series is read: a series that is not axial, a click the headers
        cannot place (it is then refused after the whole read, as before), or a slab of most of the files.
    """
    placed = [slice_position(h) for h in headers]  # (orientation, position along the normal in mm)
    try:
        numbers = [int(h.InstanceNumber) for h in headers]
        center = np.asarray([float(v) for v in near.center], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if any(p is None for p in placed) or center.shape != (3,) or not np.isfinite(center).all():
        return None
    iop = placed[0][0]
    normal = np.cross(iop[:3], iop[3:])
    normal /= np.linalg.norm(normal)
    if int(np.argmax(np.abs(normal))) != 2:
        return None  # the axial plane crosses every file of a coronal or sagittal series
    order = np.argsort(numbers)  # the reader's slice order
    along = np.asarray([placed[i][1] for i in order])  # LPS positions along the normal
    n = len(files)
    if near.world:
        point = center * (np.array([-1.0, -1.0, 1.0]) if str(near.frame).upper() == "RAS" else 1.0)  # to LPS
        k = int(np.argmin(np.abs(along - float(point @ normal))))  # in the reader's order
    else:  # the voxel's slice index is along the normal (load_ct restacks a descending series)
        k = int(np.clip(np.floor(center[2] + 0.5), 0, n - 1))
        k = n - 1 - k if descending else k
    gap = float(np.median(np.abs(np.diff(along)))) if n > 1 else 1.0
    reach = (math.ceil(max(float(near.mm_each_side), 0.0) / gap) if gap > 0 else n) + 1  # + 1: rounding's margin
    lo, hi = max(k - reach, 0), min(k + reach, n - 1)
    if hi - lo + 1 < 2:
        lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
    if hi - lo + 1 > WHOLE_SERIES_SHARE * n:
        return None
    chosen = tuple(Path(files[i]) for i in order[lo : hi + 1])
    names = "|".join(re.escape(os.path.join(str(folder), f.name)) for f in chosen)  # as the reader globs them
    start = n - 1 - hi if descending else lo  # along the normal, where load_ct puts the slices read
    affine = _series_affine(headers[order[0]], headers[order[-1]], n)
    return SeriesSlab(files=chosen, regex=rf"(?:{names})\Z", start=start, num_slices=n, affine=affine)
