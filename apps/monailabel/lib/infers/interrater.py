"""The ``probunet_raters`` infer task: each rater's outline and the model's hypotheses side by side, with their GED.

For an image that raters outlined (tags ``rater_<name>``: :mod:`lib.rater_datastore`; on a DICOMweb server each
rater's latest SEG there, :mod:`lib.dicomweb_datastore`), the reply is one layered Slicer segmentation
(``.seg.nrrd``): first one segment per rater, named ``rater alice``, then the S hypotheses of the ``probunet`` task,
named as it names them (``h3 variant B 4/16``). The reply JSON holds the squared GED between the raters' set and
the hypotheses on the image grid (:func:`monai_probunet.metrics.ged.generalized_energy_distance`: Eq. 6,
V-statistic, ``d = 1 - IoU`` of the lesion, empty-empty = 0) with its three terms, the raters (name, time, lesion
voxels) and the hypotheses' report.

The lesion centre is, in this order: the request's ``center`` / first ``foreground`` point (as for ``probunet``:
in 3D Slicer it is a click model under "SmartEdit / Deepgrow", click the lesion), the image's ``center`` info (IJK
voxel indices), or the centre voxel of the image grid (images that are candidate crops). Request::

    curl -X POST "http://127.0.0.1:8000/infer/probunet_raters?image=<id>&output=all" \
        -F 'params={"num_samples": 16, "seed": 0}' -o reply.multipart

An image no rater outlined answers 400; an image of a datastore without raters' labels 400.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor

from monai_probunet.data.raters import RATER_TAG_PREFIX
from monai_probunet.metrics.ged import generalized_energy_distance

from .probunet import ProbUNetInfer
from .request_errors import ProbUNetRequestError

logger = logging.getLogger(__name__)

__all__ = ["InterRaterInfer"]

_RATER_COLORS = [(1.0, 1.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.5, 1.0, 0.5),
                 (1.0, 0.6, 0.6)]


def _default_datastore() -> Any:
    from monailabel.interfaces.utils.app import app_instance

    return app_instance().datastore()


class InterRaterInfer(ProbUNetInfer):
    """Raters' outlines + ProbUNet hypotheses as one layered segmentation, and their GED (module docstring).

    Args:
        path, config_file, threshold_path, num_samples, seed: as :class:`ProbUNetInfer` (the same model file).
        datastore: returns the app's datastore (default: the running app's).
    """

    def __init__(
        self,
        path: str,
        config_file: str | Sequence[str],
        threshold_path: str | None = None,
        num_samples: int = 16,
        seed: int = 0,
        datastore: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(
            path=path, config_file=config_file, threshold_path=threshold_path, num_samples=num_samples, seed=seed,
            description="Inter-rater view: each rater's outline and the Probabilistic U-Net's hypotheses side by "
            "side, and the GED between the raters and the hypotheses",
        )
        self._config = {"num_samples": num_samples, "seed": seed}
        self._datastore = datastore or _default_datastore

    def warmup(self) -> float:
        return 0.0  # the probunet task warms the same model up

    # ------------------------------------------------------------------------------------------ raters

    def _image_id(self, store: Any, image_path: str) -> str:
        real = os.path.realpath(image_path)
        images = store.list_images()
        named = os.path.basename(real).split(".nii")[0]  # a DICOMweb cache names the series' NIfTI by its UID
        for image_id in sorted(images, key=lambda i: i != named):  # that one first: no other series is downloaded
            uri = store.get_image_uri(image_id)
            if uri and os.path.realpath(uri) == real:
                return image_id
        raise ProbUNetRequestError(f"image {os.path.basename(image_path)} is not in the datastore: the inter-rater "
                                   "view needs a datastore image with raters' labels.", status=400)

    def _raters(self, store: Any, image_id: str, shape: Sequence[int]) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Raters ordered by submission time (then name) and their masks, ``R x *shape`` uint8."""
        if not hasattr(store, "raters"):
            raise ProbUNetRequestError("this datastore keeps no raters' labels (a local studies folder and a "
                                       "DICOMweb server do).")
        raters = sorted(store.raters(image_id).items(), key=lambda kv: (int(kv[1].get("ts", 0)), kv[0]))
        if not raters:
            raise ProbUNetRequestError(f"image {image_id!r} has no rater's outline yet (labels tagged "
                                       f"{RATER_TAG_PREFIX}<name>): submit the raters' labels first.")
        out, masks = [], []
        for name, info in raters:
            path = store.get_label_uri(image_id, f"{RATER_TAG_PREFIX}{name}")
            if not path or not os.path.isfile(path):
                logger.warning(f"probunet_raters {image_id}: rater {name}'s label file is gone (removed): left out")
                continue
            mask = np.asarray(nib.load(path).dataobj)
            if mask.size != int(np.prod(shape)):
                raise ProbUNetRequestError(f"rater {name}'s label of {image_id!r} has shape {list(mask.shape)}, "
                                           f"not the image's {list(shape)}.", status=422)
            masks.append((mask.reshape(shape) > 0).astype(np.uint8))
            out.append({"rater": name, "ts": int(info.get("ts", 0)), "lesion_voxels": int(masks[-1].sum())})
        if not masks:
            raise ProbUNetRequestError(f"image {image_id!r} has no rater's outline any more (removed): submit the "
                                       "raters' labels first.")
        return out, np.stack(masks)

    # ------------------------------------------------------------------------------------------ pipeline

    def check_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The image must be a datastore image (400); its centre: the request's, else the image's ``center`` info,
        else the grid centre; then :meth:`ProbUNetInfer.check_request` with all hypotheses asked for."""
        image_path = request.get("image_path") or request.get("image")
        if not isinstance(image_path, str) or not image_path:
            raise ProbUNetRequestError("no image: give an image id of the datastore.", status=400)
        store = self._datastore()
        image_id = self._image_id(store, image_path)
        if request.get("center") is None and not request.get("foreground"):
            from lib.activelearning.uncertainty import Uncertainty  # the strategy's rule: image info, else grid

            img = nib.load(image_path)
            try:
                center, source = Uncertainty._center(store.get_image_info(image_id) or {}, tuple(img.shape))
            except Exception as e:  # noqa: BLE001 -- HTTPException of a bad 'center' info
                raise ProbUNetRequestError(getattr(e, "detail", str(e)), status=400) from None
            request = {**request, "center": center}
        else:
            source = "request"
        checked = super().check_request({**request, "hypotheses": True})
        checked["probunet"].update(raters_image_id=image_id, raters_center_source=source)
        return checked

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        """:meth:`ProbUNetInfer.post_transforms` (the hypotheses' answer), then the raters' outlines put in front of
        the hypotheses with their GED (:meth:`with_raters`)."""
        return [*super().post_transforms(data), self.with_raters]

    def with_raters(self, data: dict[str, Any]) -> dict[str, Any]:
        """The raters' masks as the first layers of the answer, their segments and the GED in the reply JSON."""
        image_id, source = data["probunet"]["raters_image_id"], data["probunet"]["raters_center_source"]
        store = self._datastore()
        result = data[self.output_json_key]
        label = data[self.output_label_key]
        hyps = np.asarray(label.array if isinstance(label, MetaTensor) else label, dtype=np.uint8)  # S x H x W x 1
        raters, masks = self._raters(store, image_id, hyps.shape[1:])
        scored_h, scored_m, scored_on = hyps, masks, "the image grid"
        axis, index = result.get("slice_axis"), result.get("slice_index")
        if result.get("mode") == "2d" and axis is not None and index is not None and hyps.shape[1 + axis] > 1:
            # hypotheses of one slice: the raters' outlines on that slice only (their other slices are not drawn)
            scored_h, scored_m = np.take(hyps, [index], axis=1 + axis), np.take(masks, [index], axis=1 + axis)
            scored_on = f"slice {index} (mode 2d)"
        terms = generalized_energy_distance(torch.as_tensor(scored_h[None]).long(),
                                            torch.as_tensor(scored_m[None]).long())
        segments = [{"name": f"rater {r['rater']}", "label_value": i + 1, "layer": i, "rater": r["rater"],
                     "color": _RATER_COLORS[i % len(_RATER_COLORS)]} for i, r in enumerate(raters)]
        for s in data["probunet_segments"]:
            k = len(segments)
            segments.append({**s, "label_value": k + 1, "layer": k})
        data[self.output_label_key] = MetaTensor(torch.as_tensor(np.concatenate([masks, hyps])), affine=label.affine)
        data["probunet_segments"] = segments
        data["probunet_layered"] = True
        result.update(
            image_id=image_id,
            view="raters_and_hypotheses",
            raters=raters,
            num_raters=len(raters),
            ged={"ged": round(float(terms.ged[0]), 6), "d_sy": round(float(terms.d_sy[0]), 6),
                 "d_ss": round(float(terms.d_ss[0]), 6), "d_yy": round(float(terms.d_yy[0]), 6),
                 "num_samples": int(hyps.shape[0]), "num_raters": len(raters),
                 "estimator": "squared GED (Eq. 6, V-statistic; d = 1 - IoU of the lesion, empty-empty = 0) between "
                              f"the raters' outlines and the hypotheses on {scored_on}"},
            center_source=source if source != "request" else result.get("center_source"),
            segments=[{k: v for k, v in s.items() if k != "color"} for s in segments],
        )
        logger.info(f"probunet_raters {image_id}: {len(raters)} raters, {hyps.shape[0]} hypotheses, "
                    f"GED {result['ged']['ged']:.4f}")
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> Any:
        if data.get("result_extension") not in (".nrrd", ".seg.nrrd", ".dcm"):
            data["result_extension"] = ".seg.nrrd"  # always a Slicer segmentation with the names
        return super().writer(data, extension=extension, dtype=dtype)
