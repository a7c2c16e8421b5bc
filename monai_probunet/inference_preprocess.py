"""The inference chain's preprocessing as MONAI dictionary transforms (bundle id ``preprocessing``).

:func:`inference_preprocessing`: :class:`LoadCTd` (load and check the CT), :class:`CheckHypothesesMemoryd`,
:class:`ResolveCenterd` (the centre as voxel and RAS world coordinates), :class:`AxialSliced` (the axial slice
through the centre of a volume), ``CastToTyped`` + ``ScaleIntensityRanged`` (the HU window, as in training),
:class:`ModelGridd` (``Orientationd`` to the model's axis directions, ``Spacingd`` to the model's spacing,
``SpatialPadd`` continuing the image's border, ``SpatialCropd`` of the model's field around the centre; the per-case
chain is kept for ``Invertd``) and :class:`ModelInputd`.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    Compose,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
    SpatialCropd,
    SpatialPadd,
)

from .bundle_utils import ConfigValueError
from .ct_io import DEFAULT_HU_WINDOW, DEFAULT_ROI_SIZE, _affine4, _pair, _points, _slice_axis, load_ct, resolve_center
from .dicom_slab import ReadNear

__all__ = [
    "MAX_HYPOTHESES_BYTES",
    "PADDING_MODES",
    "AxialSliced",
    "CheckHypothesesMemoryd",
    "LoadCTd",
    "ModelGridd",
    "ModelInputd",
    "ResolveCenterd",
    "inference_preprocessing",
]

#: how :class:`ModelGridd` fills the model's field beyond the image border: ``"edge"`` repeats the border pixels (the
#: default), ``"constant"`` puts air there (0 after the HU window)
PADDING_MODES = ("edge", "constant")

#: the directions of the model's input axes (nibabel's codes, RAS world): the pixel rows and columns of an axial CT
#: slice as a DICOM reader gives them (``PydicomReader``: first axis to the patient's left, second posterior), the
#: slice axis superior. Every image is turned so before the model sees it and back after (training flips and turns
#: its crops every way, so this fixes the model's answer to the anatomy, not to the file's voxel order)
MODEL_AXCODES = "LPS"
#: nibabel's axis labels of a RAS affine (every image's affine here is RAS)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

#: refuse a request whose hypotheses (on the image's grid and the model's) would need more memory than this
MAX_HYPOTHESES_BYTES = 4 * 2**30


def _padding_mode(value: str) -> str:
    """``value`` if it is one of :data:`PADDING_MODES`, else a ``ValueError`` naming the choices."""
    if value not in PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {', '.join(PADDING_MODES)}, got {value!r}.")
    return value


class LoadCTd(MapTransform):
    """Load a CT slice or volume with :func:`~monai_probunet.ct_io.load_ct` (checks included).

    Of an axial DICOM series only the slices at the case's ``center`` are read (the chain answers the one axial
    slice through it, :class:`AxialSliced`), on the whole series' grid (:mod:`~monai_probunet.dicom_slab`).

    Args:
        keys: the image key.
        allow_non_ct: warn instead of refusing intensities that are not plausibly HU (see :func:`load_ct`).
        source_key: where the image's name (file name or ``"<MetaTensor>"``) is stored.
        center_key: the case's centre (with ``world`` and ``frame``), read near it; ``None``: read every slice.
        headers_key: where a case may hold its DICOM headers already read (``load_ct``'s ``dicom_headers``).

    Shapes:
        ``data[key]``: a path or a ``MetaTensor`` ``1 x *spatial``; afterwards ``MetaTensor`` ``1 x *spatial``.
    """

    def __init__(
        self,
        keys: str = "image",
        allow_non_ct: bool = False,
        source_key: str = "source",
        center_key: str | None = "center",
        headers_key: str = "dicom_headers",
    ) -> None:
        super().__init__(keys)
        self.allow_non_ct = bool(allow_non_ct)
        self.source_key = source_key
        self.center_key = center_key
        self.headers_key = headers_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        center = d.get(self.center_key) if self.center_key is not None else None
        near = None if center is None else ReadNear(center, bool(d.get("world", False)), d.get("frame", "RAS"))
        for key in self.key_iterator(d):
            d[key], d[self.source_key] = load_ct(
                d[key], allow_non_ct=self.allow_non_ct, dicom_headers=d.pop(self.headers_key, None), near=near
            )
        return d


class CheckHypothesesMemoryd(MapTransform):
    """Refuse (``ValueError``) an image whose S hypotheses would need more than ``max_bytes`` of memory.

    What they fill: S hypotheses of the answered slice (a volume's other slices stay zeros the system has not
    allocated) and S crops of the model's grid.

    Args:
        keys: the image key.
        num_samples: S.
        roi_size: the model's crop size in pixels.
        max_bytes: the limit.
    """

    def __init__(
        self,
        keys: str = "image",
        num_samples: int = 16,
        roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
        max_bytes: int = MAX_HYPOTHESES_BYTES,
    ) -> None:
        super().__init__(keys)
        self.num_samples = int(num_samples)
        self.roi = _pair(roi_size, "roi_size", int)
        self.max_bytes = max_bytes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            spatial = tuple(int(n) for n in img.shape[1:])
            image_bytes = int(np.prod(spatial))
            if len(spatial) == 3:  # a volume: its slice
                image_bytes //= spatial[_slice_axis(_affine4(img), 3)]
            crop_bytes = self.roi[0] * self.roi[1] * 4 * 4 * 3
            need = self.num_samples * (image_bytes + crop_bytes)
            if need > self.max_bytes:
                fix = ("use a smaller crop (--roi-size)" if crop_bytes > image_bytes
                       else "draw fewer hypotheses (num_samples; the CLI's --num-samples)")
                raise ValueError(
                    f"num_samples={self.num_samples} hypotheses of {d.get('source', key)} (spatial shape "
                    f"{tuple(img.shape[1:])}, crop {self.roi[0]} x {self.roi[1]} px) would need about "
                    f"{need / 2**30:.1f} GiB; at most {self.max_bytes / 2**30:.0f} GiB: {fix}."
                )
        return d


class ResolveCenterd(MapTransform):
    """The lesion centre of the case as voxel coordinates of the image and RAS millimetres.

    Reads ``center`` (and ``world``, ``frame``) of the case and stores ``center_voxel``, ``center_world_ras``,
    ``input_affine`` (the image's voxel -> RAS ``4 x 4`` float64 affine) and ``input_shape`` (its spatial shape).

    Args:
        keys: the image key.
        center_key: key of the centre (voxel, or world with ``world`` true).

    Raises:
        ValueError: a centre of the wrong length, not finite or outside the image (:func:`resolve_center`).
    """

    def __init__(self, keys: str = "image", center_key: str = "center") -> None:
        super().__init__(keys)
        self.center_key = center_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            voxel, world_ras = resolve_center(
                img, d[self.center_key], world=bool(d.get("world", False)), frame=d.get("frame", "RAS"),
                source=d.get("source", "image"),
            )
            d["center_voxel"], d["center_world_ras"] = voxel, world_ras
            d["input_affine"] = _affine4(img)
            d["input_shape"] = tuple(int(s) for s in img.shape[1:])
        return d


class AxialSliced(MapTransform):
    """The axial slice through the centre of a volume (a 1-voxel-thick ``SpatialCrop``); a 2-D image as it is.

    Stores ``slice_axis`` and ``slice_index`` (``None`` for a 2-D image) and ``plane_shape``. The slice starts a new
    transform history (only the model-grid chain after it is inverted).

    Args:
        keys: the image key (after :class:`ResolveCenterd`).

    Shapes:
        ``1 x H x W x D`` -> ``1 x H x W x 1`` (the slice axis kept, of size 1); ``1 x H x W`` unchanged.
    """

    def __init__(self, keys: str = "image") -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            nd = img.ndim - 1
            slice_axis = slice_index = None
            if nd == 3:
                slice_axis = _slice_axis(d["input_affine"], nd)
                voxel = d["center_voxel"]
                slice_index = int(np.clip(np.floor(voxel[slice_axis] + 0.5), 0, img.shape[1 + slice_axis] - 1))
                start, end = [0, 0, 0], list(img.shape[1:])
                start[slice_axis], end[slice_axis] = slice_index, slice_index + 1
                img = SpatialCrop(roi_start=start, roi_end=end)(img)
            d[key] = MetaTensor(img.as_tensor(), affine=img.affine, meta={"filename_or_obj": d.get("source", "")})
            d["slice_axis"], d["slice_index"] = slice_axis, slice_index
            d["plane_shape"] = tuple(int(s) for s in d[key].shape[1:])
        return d


class ModelGridd(MapTransform):
    """Turn the slice to the model's axis directions, resample in-plane to the model's spacing, pad beyond the border
    and crop the model's field around the centre.

    Per case it builds ``Orientationd`` (:data:`MODEL_AXCODES`: the same anatomy gives the model the same crop
    however the file orders its voxels; a volume's slice axis then last), ``Spacingd`` (``mode``, bilinear by default;
    the slice axis kept), ``SpatialPadd`` (by the field) and ``SpatialCropd`` (``roi_size`` around the centre), applies
    them and keeps their ``Compose`` under ``transform_key`` for :class:`InvertModelGridd`. Also stores
    ``model_slice_axis`` (the slice axis on the model's grid), ``inside`` (bool ``1 x *crop``: crop pixels that lie on
    the image), ``model_spacing`` and ``model_roi_size``.

    A centre near the border (within half the field) puts part of the field beyond the image. Air padding
    (``"constant"``) draws a straight tissue-to-air edge across whatever the border cuts, and a cut aorta or vessel
    then looks like a nodule against lung (docs/lidc_phantom.md: the shipped model outlined the aorta of a cropped
    real slice that way); repeating the border pixels (``"edge"``, the default) continues the tissue instead. Where
    the image's own border is air (a whole axial slice) both give air. Hypotheses beyond the border are dropped either
    way (``inside``).

    Args:
        keys: the image key (windowed, after :class:`AxialSliced`).
        spacing: the model's in-plane pixel spacing in mm (one value or a pair).
        roi_size: the model's crop size in pixels.
        transform_key: where the case's chain is stored.
        padding_mode: one of :data:`PADDING_MODES`.
        mode: ``Spacingd``'s interpolation: ``"bilinear"`` for an image, ``"nearest"`` for a mask (the training
            export cuts the raters' masks with the image, :mod:`monai_probunet.data.volume_crops`).

    Raises:
        ValueError: an image smaller than the model's field at ``spacing`` (never padded into one), or an unknown
            ``padding_mode``.
    """

    def __init__(
        self,
        keys: str = "image",
        spacing: float | Sequence[float] = 1.0,
        roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
        transform_key: str = "model_grid",
        padding_mode: str = "edge",
        mode: str = "bilinear",
    ) -> None:
        super().__init__(keys)
        self.mode = mode
        self.spacing = _pair(spacing, "spacing", float)
        self.roi = _pair(roi_size, "roi_size", int)
        self.transform_key = transform_key
        self.padding_mode = _padding_mode(padding_mode)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d.update(self._apply(d, key))
        return d

    def _apply(self, d: dict, key: Hashable) -> dict[Hashable, Any]:
        nd = d[key].ndim - 1
        # the model's axis directions whatever order the file stores its voxels in (a volume's slice axis last)
        orient_t = Orientationd(keys=key, axcodes=MODEL_AXCODES[:nd], labels=RAS_LABELS)
        plane = orient_t({key: d[key]})[key]
        slice_axis = 2 if nd == 3 else None
        inplane = [a for a in range(nd) if a != slice_axis]
        pixdim, pad_size, crop_size = [-1.0] * nd, [-1] * nd, [1] * nd
        for a, s, r in zip(inplane, self.spacing, self.roi):
            pixdim[a], crop_size[a] = s, r
        spacing_t = Spacingd(keys=key, pixdim=pixdim, mode=self.mode, padding_mode="border")
        out = spacing_t({key: plane})
        resampled = [int(out[key].shape[1 + a]) for a in inplane]
        if any(n < r for n, r in zip(resampled, self.roi)):
            (s0, s1), (r0, r1) = self.spacing, self.roi
            extent = [float(np.linalg.norm(np.asarray(plane.affine)[:3, a])) * plane.shape[1 + a] for a in inplane]
            raise ValueError(
                f"{d.get('source', key)}: the image ({' x '.join(f'{e:.1f}' for e in extent)} mm in-plane, "
                f"{resampled[0]} x {resampled[1]} px at the model's {s0:g} x {s1:g} mm) is smaller than the model's "
                f"field of {r0} x {r1} px ({r0 * s0:g} x {r1 * s1:g} mm); give the whole slice, not a small crop."
            )
        inside_plane = MetaTensor(torch.ones_like(d[key].as_tensor()), affine=d[key].affine)
        for a in inplane:
            pad_size[a] = int(out[key].shape[1 + a]) + crop_size[a]
        pad_kwargs = {"value": 0.0} if self.padding_mode == "constant" else {}
        pad_t = SpatialPadd(keys=key, spatial_size=pad_size, mode=self.padding_mode, **pad_kwargs)
        out = pad_t(out)
        vox_padded = _points(_affine4(out[key]), np.asarray(d["center_world_ras"])[None], invert=True)[0][:nd]
        roi_center = [int(np.floor(v + 0.5)) for v in vox_padded]
        if slice_axis is not None:
            roi_center[slice_axis] = 0
        crop_t = SpatialCropd(keys=key, roi_center=roi_center, roi_size=crop_size)
        out = crop_t(out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zero_pad_t = SpatialPadd(keys=key, spatial_size=pad_size, mode="constant", value=0.0)
            inside = crop_t(zero_pad_t(spacing_t(orient_t({key: inside_plane}))))[key].as_tensor() > 0.5
        return {
            key: out[key],
            self.transform_key: Compose([orient_t, spacing_t, pad_t, crop_t]),
            "model_slice_axis": slice_axis,
            "inside": inside,
            "model_spacing": self.spacing,
            "model_roi_size": self.roi,
        }


class ModelInputd(MapTransform):
    """The network's input: the crop as a plain float tensor without the slice axis.

    Args:
        keys: the image key (after :class:`ModelGridd`).
        output_key: where the input is stored.

    Shapes:
        ``1 x *crop`` (``1 x H x W`` or ``1 x H x W x 1`` etc.) -> ``1 x H x W``.
    """

    def __init__(self, keys: str = "image", output_key: str = "model_input") -> None:
        super().__init__(keys)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key].as_tensor().float()
            if d.get("model_slice_axis") is not None:
                x = x.squeeze(1 + d["model_slice_axis"])
            d[self.output_key] = x
        return d


def inference_preprocessing(
    spacing: float | Sequence[float] | None,
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    num_samples: int = 16,
    allow_non_ct: bool = False,
    padding_mode: str = "edge",
) -> Compose:
    """The preprocessing chain (bundle id ``preprocessing``): load, centre, slice, window, model grid, input.

    Args:
        spacing: the model's in-plane pixel spacing in mm (required).
        roi_size: the model's crop size in pixels.
        hu_window: ``[low, high]`` HU scaled to ``[0, 1]`` with clipping (as in training).
        num_samples: S (for the memory check).
        allow_non_ct: warn instead of refusing intensities that are not plausibly HU.
        padding_mode: how the model's field is filled beyond the image border (:class:`ModelGridd`).

    Returns:
        A ``Compose`` of dictionary transforms taking ``{"image", "center", "world", "frame"}``.

    Raises:
        ConfigValueError: (a ``ValueError``) a missing spacing, a bad ``spacing``, ``hu_window``, ``roi_size`` or
            ``padding_mode``; the bundle command prints it as one line.
    """
    from .ct_io import SPACING_HINT

    if spacing is None:
        raise ConfigValueError(f"spacing is required: {SPACING_HINT}.")
    try:
        _pair(spacing, "spacing", float)
        _pair(roi_size, "roi_size", int)
        _padding_mode(padding_mode)
    except ValueError as e:
        raise ConfigValueError(str(e)) from e
    if len(hu_window) != 2 or not float(hu_window[0]) < float(hu_window[1]):
        raise ConfigValueError(f"hu_window must be [low, high] with low < high, got {hu_window!r}.")
    return Compose(
        [
            LoadCTd("image", allow_non_ct=allow_non_ct),
            CheckHypothesesMemoryd("image", num_samples=num_samples, roi_size=roi_size),
            ResolveCenterd("image"),
            AxialSliced("image"),
            CastToTyped("image", dtype=torch.float32),
            ScaleIntensityRanged(
                "image", a_min=float(hu_window[0]), a_max=float(hu_window[1]), b_min=0.0, b_max=1.0, clip=True
            ),
            ModelGridd("image", spacing=spacing, roi_size=roi_size, padding_mode=padding_mode),
            ModelInputd("image"),
        ]
    )
