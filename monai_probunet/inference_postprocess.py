"""The inference chain's postprocessing as MONAI dictionary transforms (bundle id ``postprocessing``).

:func:`inference_postprocessing`: :class:`HypothesesFromLogitsd` (label maps, mean probability and entropy on the
model's grid), :class:`InvertModelGridd` (``Invertd`` of the case's chain back onto the slice's grid),
:class:`ToInputGridd` (the slice written into the input's grid), :class:`PresenceSummaryd` (presence, ambiguity,
areas, variants) and :class:`ToHypothesesd` (the :class:`~monai_probunet.hypotheses.Hypotheses`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, MapTransform

from .hypotheses import Hypotheses, _ambiguity, _as_threshold, group_variants
from .metrics import PresenceThreshold

__all__ = [
    "HypothesesFromLogitsd",
    "InvertModelGridd",
    "PresenceSummaryd",
    "ToHypothesesd",
    "ToInputGridd",
    "inference_postprocessing",
]


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
        slice_axis = d.get("model_slice_axis")
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
            labels = _slice_outermost((num_samples, *spatial), 1 + slice_axis, np.uint8)
            mp = _slice_outermost(spatial, slice_axis, np.float32)
            en = _slice_outermost(spatial, slice_axis, np.float32)
            idx = [slice(None)] * nd
            idx[slice_axis] = slice(slice_index, slice_index + 1)
            labels[(slice(None), *idx)] = hyp
            mp[tuple(idx)] = mean_prob
            en[tuple(idx)] = entropy
        else:
            labels, mp, en = hyp, mean_prob.astype(np.float32), entropy.astype(np.float32)
        d["labels"], d["mean_probability"], d["entropy"] = labels, mp, en
        return d


def _slice_outermost(shape: Sequence[int], axis: int, dtype: type) -> np.ndarray:
    """Zeros of ``shape`` whose ``axis`` varies slowest in memory (a view of a C-ordered array), so that writing one
    index of ``axis`` (a volume's slice) touches that slice's memory only, not every page of the volume."""
    buf = np.zeros((shape[axis], *shape[:axis], *shape[axis + 1:]), dtype=dtype)
    return np.moveaxis(buf, 0, axis)


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
            inplane = [a for a in range(crop.ndim - 1) if a != d.get("model_slice_axis")]
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
                prior_sampling=d.get("prior_sampling"),
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
        A ``Compose`` of dictionary transforms taking the case after
        :func:`~monai_probunet.hypotheses_inferer.run_hypotheses`' inference step (``pred``: logits
        ``1 x S x C x H x W``) and leaving the result under ``hypotheses``.
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
