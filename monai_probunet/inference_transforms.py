"""The inference chain as MONAI pieces: dictionary transforms, the sampling inferer and the loop that composes them.

One implementation serves :func:`~monai_probunet.predict.predict_hypotheses` (and through it the 3-D mode, the CLI,
batch inference and the MONAI Label task) and the bundle's ``inference.yaml`` (ids ``preprocessing``, ``inferer``,
``postprocessing``): both build the pieces with the factories below and run them with :func:`run_hypotheses`.

A case is a dictionary ``{"image": path or MetaTensor, "center": [...], "world": bool, "frame": "RAS" | "LPS"}``:

* :func:`inference_preprocessing`: :class:`LoadCTd` (load and check the CT), :class:`CheckHypothesesMemoryd`,
  :class:`ResolveCenterd` (the centre as voxel and RAS world coordinates), :class:`AxialSliced` (the axial slice
  through the centre of a volume), ``CastToTyped`` + ``ScaleIntensityRanged`` (the HU window, as in training),
  :class:`ModelGridd` (``Spacingd`` to the model's spacing, ``SpatialPadd`` with air, ``SpatialCropd`` of the
  model's field around the centre; the per-case chain is kept for ``Invertd``) and :class:`ModelInputd`.
* :class:`HypothesesInferer`: the call of :class:`~monai_probunet.engines.SamplingInferer` returning the logits of S
  hypotheses, the latent noise re-seeded for every image (same seed, same hypotheses).
* :func:`inference_postprocessing`: :class:`HypothesesFromLogitsd` (label maps, mean probability and entropy on
  the model's grid), :class:`InvertModelGridd` (``Invertd`` of the case's chain back onto the slice's grid),
  :class:`ToInputGridd` (the slice written into the input's grid), :class:`PresenceSummaryd` (presence,
  ambiguity, areas, variants) and :class:`ToHypothesesd` (the :class:`~monai_probunet.hypotheses.Hypotheses`).

:func:`run_hypotheses` runs one case through the three; :func:`apply_inferer` is its middle step (the MONAI Label
task runs the same three steps as its pre-transforms, inferer and post-transforms).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import Inferer
from monai.transforms import (
    CastToTyped,
    Compose,
    Invertd,
    MapTransform,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
    SpatialCropd,
    SpatialPadd,
)

from .bundle_utils import ConfigValueError
from .ct_io import DEFAULT_HU_WINDOW, DEFAULT_ROI_SIZE, _affine4, _pair, _points, _slice_axis, load_ct, resolve_center
from .hypotheses import Hypotheses, _ambiguity, _as_threshold, group_variants
from .metrics import PresenceThreshold

__all__ = [
    "MAX_HYPOTHESES_BYTES",
    "AxialSliced",
    "CheckHypothesesMemoryd",
    "HypothesesFromLogitsd",
    "HypothesesInferer",
    "InvertModelGridd",
    "LoadCTd",
    "ModelGridd",
    "ModelInputd",
    "PresenceSummaryd",
    "ResolveCenterd",
    "ToHypothesesd",
    "ToInputGridd",
    "apply_inferer",
    "inference_postprocessing",
    "inference_preprocessing",
    "run_hypotheses",
]

#: refuse a request whose hypotheses (on the image's grid and the model's) would need more memory than this
MAX_HYPOTHESES_BYTES = 4 * 2**30


# --------------------------------------------------------------------------------------------- preprocessing


class LoadCTd(MapTransform):
    """Load a CT slice or volume with :func:`~monai_probunet.ct_io.load_ct` (checks included).

    Args:
        keys: the image key.
        allow_non_ct: warn instead of refusing intensities that are not plausibly HU (see :func:`load_ct`).
        source_key: where the image's name (file name or ``"<MetaTensor>"``) is stored.

    Shapes:
        ``data[key]``: a path or a ``MetaTensor`` ``1 x *spatial``; afterwards ``MetaTensor`` ``1 x *spatial``.
    """

    def __init__(self, keys: str = "image", allow_non_ct: bool = False, source_key: str = "source") -> None:
        super().__init__(keys)
        self.allow_non_ct = bool(allow_non_ct)
        self.source_key = source_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[self.source_key] = load_ct(d[key], allow_non_ct=self.allow_non_ct)
        return d


class CheckHypothesesMemoryd(MapTransform):
    """Refuse (``ValueError``) an image whose S hypotheses would need more than ``max_bytes`` of memory.

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
            need = self.num_samples * (int(np.prod(img.shape[1:])) + self.roi[0] * self.roi[1] * 4 * 4 * 3)
            if need > self.max_bytes:
                raise ValueError(
                    f"num_samples={self.num_samples} hypotheses of {d.get('source', key)} (spatial shape "
                    f"{tuple(img.shape[1:])}) would need about {need / 2**30:.1f} GiB; at most "
                    f"{self.max_bytes / 2**30:.0f} GiB: draw fewer (--num-samples)."
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
    """Resample in-plane to the model's spacing, pad with air and crop the model's field around the centre.

    Per case it builds ``Spacingd`` (bilinear, the slice axis kept), ``SpatialPadd`` (by the field, value 0 = air
    after windowing) and ``SpatialCropd`` (``roi_size`` around the centre), applies them and keeps their ``Compose``
    under ``transform_key`` for :class:`InvertModelGridd`. Also stores ``inside`` (bool ``1 x *crop``: crop pixels
    that lie on the image), ``model_spacing`` and ``model_roi_size``.

    Args:
        keys: the image key (windowed, after :class:`AxialSliced`).
        spacing: the model's in-plane pixel spacing in mm (one value or a pair).
        roi_size: the model's crop size in pixels.
        transform_key: where the case's chain is stored.

    Raises:
        ValueError: an image smaller than the model's field at ``spacing`` (never padded into one).
    """

    def __init__(
        self,
        keys: str = "image",
        spacing: float | Sequence[float] = 1.0,
        roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
        transform_key: str = "model_grid",
    ) -> None:
        super().__init__(keys)
        self.spacing = _pair(spacing, "spacing", float)
        self.roi = _pair(roi_size, "roi_size", int)
        self.transform_key = transform_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d.update(self._apply(d, key))
        return d

    def _apply(self, d: dict, key: Hashable) -> dict[Hashable, Any]:
        plane = d[key]
        slice_axis = d.get("slice_axis")
        nd = plane.ndim - 1
        inplane = [a for a in range(nd) if a != slice_axis]
        pixdim, pad_size, crop_size = [-1.0] * nd, [-1] * nd, [1] * nd
        for a, s, r in zip(inplane, self.spacing, self.roi):
            pixdim[a], crop_size[a] = s, r
        spacing_t = Spacingd(keys=key, pixdim=pixdim, mode="bilinear", padding_mode="border")
        out = spacing_t({key: plane})
        resampled = [int(out[key].shape[1 + a]) for a in inplane]
        if any(n < r for n, r in zip(resampled, self.roi)):
            affine, plane_shape, (s0, s1), (r0, r1) = d["input_affine"], d["plane_shape"], self.spacing, self.roi
            extent = [float(np.linalg.norm(np.asarray(affine)[:3, a])) * plane_shape[a] for a in inplane]
            raise ValueError(
                f"{d.get('source', key)}: the image ({' x '.join(f'{e:.1f}' for e in extent)} mm in-plane, "
                f"{resampled[0]} x {resampled[1]} px at the model's {s0:g} x {s1:g} mm) is smaller than the model's "
                f"field of {r0} x {r1} px ({r0 * s0:g} x {r1 * s1:g} mm); give the whole slice, not a small crop."
            )
        inside_plane = MetaTensor(torch.ones_like(plane.as_tensor()), affine=plane.affine)
        for a in inplane:
            pad_size[a] = int(out[key].shape[1 + a]) + crop_size[a]
        pad_t = SpatialPadd(keys=key, spatial_size=pad_size, mode="constant", value=0.0)
        out = pad_t(out)
        vox_padded = _points(_affine4(out[key]), np.asarray(d["center_world_ras"])[None], invert=True)[0][:nd]
        roi_center = [int(np.floor(v + 0.5)) for v in vox_padded]
        if slice_axis is not None:
            roi_center[slice_axis] = 0
        crop_t = SpatialCropd(keys=key, roi_center=roi_center, roi_size=crop_size)
        out = crop_t(out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inside = crop_t(pad_t(spacing_t({key: inside_plane})))[key].as_tensor() > 0.5
        return {
            key: out[key],
            self.transform_key: Compose([spacing_t, pad_t, crop_t]),
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
            if d.get("slice_axis") is not None:
                x = x.squeeze(1 + d["slice_axis"])
            d[self.output_key] = x
        return d


def inference_preprocessing(
    spacing: float | Sequence[float] | None,
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    num_samples: int = 16,
    allow_non_ct: bool = False,
) -> Compose:
    """The preprocessing chain (bundle id ``preprocessing``): load, centre, slice, window, model grid, input.

    Args:
        spacing: the model's in-plane pixel spacing in mm (required).
        roi_size: the model's crop size in pixels.
        hu_window: ``[low, high]`` HU scaled to ``[0, 1]`` with clipping (as in training).
        num_samples: S (for the memory check).
        allow_non_ct: warn instead of refusing intensities that are not plausibly HU.

    Returns:
        A ``Compose`` of dictionary transforms taking ``{"image", "center", "world", "frame"}``.

    Raises:
        ConfigValueError: (a ``ValueError``) a missing spacing, a bad ``spacing``, ``hu_window`` or ``roi_size``;
            the bundle command prints it as one line.
    """
    from .ct_io import SPACING_HINT

    if spacing is None:
        raise ConfigValueError(f"spacing is required: {SPACING_HINT}.")
    try:
        _pair(spacing, "spacing", float)
        _pair(roi_size, "roi_size", int)
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
            ModelGridd("image", spacing=spacing, roi_size=roi_size),
            ModelInputd("image"),
        ]
    )


# --------------------------------------------------------------------------------------------- inferer


class HypothesesInferer(Inferer):
    """S hypotheses' logits of each image: ``network.sample(inputs, num_samples, generator)``, re-seeded per call.

    The call of :class:`~monai_probunet.engines.SamplingInferer` with ``return_labels=False`` and fp32 (DDP
    unwrapped, a private generator seeded with ``seed``), re-seeded at every call so that each image gets the same
    latent draws for the same seed, and without ignite (the engines' dependency), so that a one-image run imports
    only MONAI and torch.

    Args:
        num_samples: S.
        seed: seed of the latent-noise generator; every call starts from it (same seed, same hypotheses).

    Shapes:
        ``inputs``: ``B x 1 x H x W``; returns float logits ``B x S x C x H x W``.

    Raises:
        TypeError: the network has no ``sample`` method.
        ValueError: ``num_samples < 1``, or the network returned another shape.
    """

    def __init__(self, num_samples: int = 16, seed: int = 0) -> None:
        super().__init__()
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.seed = int(seed)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        model = network.module if isinstance(network, nn.parallel.DistributedDataParallel) else network
        if not hasattr(model, "sample"):
            raise TypeError(f"{type(model).__name__} has no sample(image, num_samples) method.")
        generator = torch.Generator(device=inputs.device).manual_seed(self.seed)
        with torch.no_grad():
            logits = model.sample(inputs, self.num_samples, generator=generator).float()
        b, s = inputs.shape[0], self.num_samples
        if logits.ndim != 5 or logits.shape[:2] != (b, s) or tuple(logits.shape[3:]) != tuple(inputs.shape[2:]):
            expected = f"{b} x {s} x C x {tuple(inputs.shape[2:])}"
            raise ValueError(f"model.sample returned shape {tuple(logits.shape)}, expected {expected}.")
        return logits


# --------------------------------------------------------------------------------------------- postprocessing


class HypothesesFromLogitsd(MapTransform):
    """Label maps, mean foreground probability and entropy of one image's S hypotheses on the model's grid.

    Stores ``crop_labels`` (``S x H x W`` long: arg-max, 0 outside the image), ``hyp`` (the label maps) and ``maps``
    (foreground probability and entropy in bits) as ``MetaTensor`` on the crop's grid (the slice axis restored), to
    be inverted.

    Args:
        keys: the logits key (``1 x S x C x H x W``, a batch of one).
        image_key: the crop (:class:`ModelGridd`), whose affine the maps get.
    """

    def __init__(self, keys: str = "pred", image_key: str = "image") -> None:
        super().__init__(keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        slice_axis = d.get("slice_axis")
        crop = d[self.image_key]
        for key in self.key_iterator(d):
            probs = torch.softmax(d[key][0].float(), dim=1).cpu()  # S x C x roi x roi
            inside = d["inside"][0].squeeze(slice_axis) if slice_axis is not None else d["inside"][0]
            crop_labels = probs.argmax(dim=1) * inside  # S x roi x roi, 0 outside the image
            mean = probs.mean(dim=0)  # C x roi x roi
            fg = mean[1:].sum(dim=0)
            ent = -(torch.where(mean > 0, mean * torch.log2(mean.clamp_min(1e-30)), torch.zeros_like(mean))).sum(dim=0)

            def on_crop_grid(t: torch.Tensor) -> MetaTensor:
                if slice_axis is not None:
                    t = t.unsqueeze(1 + slice_axis)
                return MetaTensor(t.float(), affine=crop.affine, meta={"filename_or_obj": d.get("source", "")})

            d["crop_labels"] = crop_labels
            d["hyp"] = on_crop_grid(crop_labels)
            d["maps"] = on_crop_grid(torch.stack([fg, ent]))
        return d


class InvertModelGridd(MapTransform):
    """``Invertd`` of the case's model-grid chain (:class:`ModelGridd`): back onto the slice's grid.

    A thin adapter: MONAI's ``Invertd`` takes the transform to invert at construction, while the crop around the
    centre differs per case, so the chain is read from ``transform_key`` of the case.

    Args:
        keys: keys to invert.
        orig_keys: the key whose transform history is inverted (the crop).
        transform_key: the case's chain.
        nearest_interp: per key, nearest-neighbour interpolation (label maps) or linear.
    """

    def __init__(
        self,
        keys: Sequence[str] = ("hyp", "maps"),
        orig_keys: str = "image",
        transform_key: str = "model_grid",
        nearest_interp: bool | Sequence[bool] = (True, False),
    ) -> None:
        super().__init__(keys)
        self.orig_keys = orig_keys
        self.transform_key = transform_key
        self.nearest_interp = list(nearest_interp) if isinstance(nearest_interp, Sequence) else nearest_interp

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        inv = Invertd(
            keys=list(self.keys), transform=data[self.transform_key], orig_keys=self.orig_keys,
            nearest_interp=self.nearest_interp,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(inv(dict(data)))


class ToInputGridd(MapTransform):
    """The inverted maps as arrays on the input's grid: a volume's slice written into an otherwise empty volume.

    Stores ``labels`` (uint8 ``S x *spatial``), ``mean_probability`` and ``entropy`` (float32 ``*spatial``).

    Args:
        keys: ``(labels key, maps key)`` after :class:`InvertModelGridd`.

    Raises:
        RuntimeError: the inverse did not return the slice's grid.
    """

    def __init__(self, keys: Sequence[str] = ("hyp", "maps")) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        hyp_key, maps_key = self.keys
        hyp = torch.as_tensor(d[hyp_key].as_tensor()).round().clamp(0, 255).to(torch.uint8).numpy()
        maps = torch.as_tensor(d[maps_key].as_tensor()).float().numpy()
        plane_shape = d["plane_shape"]
        if tuple(hyp.shape[1:]) != plane_shape or tuple(maps.shape[1:]) != plane_shape:
            raise RuntimeError(f"inverse mapping returned {hyp.shape[1:]}, expected the slice grid {plane_shape}.")
        mean_prob = np.clip(maps[0], 0.0, 1.0)
        entropy = np.clip(maps[1], 0.0, None)
        slice_axis, slice_index, spatial = d.get("slice_axis"), d.get("slice_index"), d["input_shape"]
        if slice_axis is not None:  # write the slice into an otherwise empty volume
            num_samples, nd = hyp.shape[0], len(spatial)
            labels = np.zeros((num_samples, *spatial), dtype=np.uint8)
            mp = np.zeros(spatial, dtype=np.float32)
            en = np.zeros(spatial, dtype=np.float32)
            idx = [slice(None)] * nd
            idx[slice_axis] = slice(slice_index, slice_index + 1)
            labels[(slice(None), *idx)] = hyp
            mp[tuple(idx)] = mean_prob
            en[tuple(idx)] = entropy
        else:
            labels, mp, en = hyp, mean_prob.astype(np.float32), entropy.astype(np.float32)
        d["labels"], d["mean_probability"], d["entropy"] = labels, mp, en
        return d


class PresenceSummaryd(MapTransform):
    """Lesion presence, the ambiguity flag, areas (volumes for a volume's slice) and variants of the hypotheses.

    Measured on the model's grid (``crop_labels``, pixels of ``model_spacing``). Stores ``presence_count``,
    ``presence_probability``, ``ambiguous``, ``ambiguity_rule``, ``threshold``, ``areas_mm2``, ``volumes_mm3``
    (``None`` for a 2-D image) and ``variants``.

    Args:
        keys: the label maps key (``S x H x W``).
        threshold: the fitted presence rule, its ``presence_threshold.json`` path or dict; ``None``: the fallback
            rule (:data:`~monai_probunet.hypotheses.FALLBACK_RULE`).
    """

    def __init__(
        self, keys: str = "crop_labels", threshold: PresenceThreshold | str | os.PathLike | Mapping | None = None
    ) -> None:
        super().__init__(keys)
        self.threshold = _as_threshold(threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            crop_labels = d[key]
            num_samples = int(crop_labels.shape[0])
            crop = d["image"]
            slice_axis = d.get("slice_axis")
            inplane = [a for a in range(crop.ndim - 1) if a != slice_axis]
            pixel_area = float(np.prod([float(np.linalg.norm(np.asarray(crop.affine)[:3, a])) for a in inplane]))
            flat = crop_labels.reshape(num_samples, -1) > 0
            count = int(flat.any(dim=1).sum())
            ambiguous, rule = _ambiguity(count, num_samples, self.threshold)
            areas = flat.sum(dim=1).double().numpy() * pixel_area
            volumes = None
            if slice_axis is not None:
                volumes = areas * float(np.linalg.norm(np.asarray(d["input_affine"])[:3, slice_axis]))
            d.update(
                presence_count=count,
                presence_probability=count / num_samples,
                ambiguous=ambiguous,
                ambiguity_rule=rule,
                threshold=self.threshold,
                areas_mm2=areas,
                volumes_mm3=volumes,
                variants=group_variants(crop_labels, pixel_area),
            )
        return d


class ToHypothesesd(MapTransform):
    """The case's results as a :class:`~monai_probunet.hypotheses.Hypotheses` under ``output_key``.

    Args:
        keys: the label maps on the input's grid (:class:`ToInputGridd`).
        output_key: where the result is stored.
    """

    def __init__(self, keys: str = "labels", output_key: str = "hypotheses") -> None:
        super().__init__(keys)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = Hypotheses(
                labels=d[key],
                mean_probability=d["mean_probability"],
                entropy=d["entropy"],
                affine=np.asarray(d["input_affine"], dtype=np.float64),
                presence_count=d["presence_count"],
                presence_probability=d["presence_probability"],
                ambiguous=d["ambiguous"],
                ambiguity_rule=d["ambiguity_rule"],
                threshold=d["threshold"],
                areas_mm2=d["areas_mm2"],
                volumes_mm3=d["volumes_mm3"],
                variants=d["variants"],
                center_voxel=tuple(float(v) for v in d["center_voxel"]),
                center_world_ras=tuple(float(v) for v in d["center_world_ras"]),
                slice_axis=d["slice_axis"],
                slice_index=d["slice_index"],
                model_input=d["model_input"][0].cpu().numpy(),
                crop_labels=d["crop_labels"].to(torch.uint8).numpy(),
                source=d["source"],
                num_samples=int(d["crop_labels"].shape[0]),
                seed=int(d["seed"]),
                spacing=d["model_spacing"],
                roi_size=d["model_roi_size"],
            )
        return d


def inference_postprocessing(
    threshold: PresenceThreshold | str | os.PathLike | Mapping | None = None,
) -> Compose:
    """The postprocessing chain (bundle id ``postprocessing``): hypotheses, ``Invertd``, input grid, summary.

    Args:
        threshold: the fitted presence rule (or its path / dict); ``None``: the fallback rule.

    Returns:
        A ``Compose`` of dictionary transforms taking the case after :func:`run_hypotheses`' inference step
        (``pred``: logits ``1 x S x C x H x W``) and leaving the result under ``hypotheses``.
    """
    return Compose(
        [
            HypothesesFromLogitsd("pred"),
            InvertModelGridd(("hyp", "maps"), orig_keys="image", nearest_interp=(True, False)),
            ToInputGridd(("hyp", "maps")),
            PresenceSummaryd("crop_labels", threshold=threshold),
            ToHypothesesd("labels", output_key="hypotheses"),
        ]
    )


# --------------------------------------------------------------------------------------------- the loop


def _unwrap(e: RuntimeError) -> BaseException:
    """The error a transform raised inside ``Compose`` (MONAI wraps it in ``RuntimeError("applying transform")``)."""
    cause: BaseException = e
    while (
        isinstance(cause, RuntimeError)
        and cause.__cause__ is not None
        and str(cause).startswith("applying transform")
    ):
        cause = cause.__cause__
    return cause


def _apply(chain: Compose, data: dict) -> dict:
    try:
        return chain(data)
    except RuntimeError as e:
        cause = _unwrap(e)
        if cause is e:
            raise
        raise cause from None


def run_hypotheses(
    case: Mapping[str, Any],
    network: nn.Module,
    preprocessing: Compose,
    inferer: HypothesesInferer,
    postprocessing: Compose,
    device: str | torch.device = "cpu",
) -> Hypotheses:
    """Run one case through ``preprocessing``, ``inferer`` and ``postprocessing``.

    Errors raised by a transform (``ValueError`` for bad input, ``FileNotFoundError``) come out as raised, not
    wrapped in MONAI's ``RuntimeError("applying transform ...")``.

    Args:
        case: ``{"image": path or MetaTensor, "center": [...], "world": bool, "frame": "RAS" | "LPS"}``.
        network: a model with ``sample(image, num_samples, generator)``; moved to ``device``, eval mode.
        preprocessing: :func:`inference_preprocessing`.
        inferer: :class:`HypothesesInferer`.
        postprocessing: :func:`inference_postprocessing`.
        device: where the model runs.

    Returns:
        The :class:`~monai_probunet.hypotheses.Hypotheses` of the case.
    """
    data = _apply(preprocessing, dict(case))
    data = apply_inferer(data, network, inferer, device=device)
    data = _apply(postprocessing, data)
    return data["hypotheses"]


def apply_inferer(
    data: dict, network: nn.Module, inferer: HypothesesInferer, device: str | torch.device = "cpu"
) -> dict:
    """The step between ``preprocessing`` and ``postprocessing``: the inferer on the case's model input.

    Args:
        data: the case after :func:`inference_preprocessing` (``model_input``: ``1 x H x W``).
        network: a model with ``sample``; moved to ``device``, eval mode.
        inferer: :class:`HypothesesInferer`.
        device: where the model runs.

    Returns:
        ``data`` with ``pred`` (logits ``1 x S x C x H x W``) and ``seed`` (the inferer's).
    """
    device = torch.device(device)
    x = data["model_input"][None].to(device)  # 1 x 1 x roi x roi
    network = network.to(device).eval()
    data["pred"] = inferer(x, network)
    data["seed"] = inferer.seed
    return data
