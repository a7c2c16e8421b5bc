"""The ``probunet`` infer task: S Probabilistic U-Net hypotheses of the lesion at a centre of the image.

The label returned is the most frequent variant (hypotheses grouped by IoU >= 0.9) on the image's own grid; with
``{"hypotheses": true}`` all S hypotheses come back as a multi-segment ``.seg.nrrd`` (segment ``s`` = hypothesis
``s``). The result JSON holds the lesion-presence probability, the ambiguous flag and its rule, the variants with
their frequencies, per-hypothesis areas (and volumes for a 3-D image) and the centre used
(:meth:`monai_probunet.inference.Hypotheses.to_report`).

Request parameters (form field ``params``, JSON): ``center`` ``[x, y(, z)]`` (voxel indices of the array as MONAI
loads the image; or world mm with ``"world": true`` and ``"frame": "RAS" | "LPS"``), else the first ``foreground``
click, else the image centre; ``num_samples`` (16), ``seed`` (0), ``hypotheses`` (false).
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import MetaTensor
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.writer import Writer

from monai_probunet.inference import find_presence_threshold, load_ct, load_model, predict_hypotheses

from .params import parse_params

logger = logging.getLogger(__name__)

__all__ = ["ProbUNetInfer", "ProbUNetRequestError"]


class ProbUNetRequestError(MONAILabelException):
    """A request the task cannot serve; ``status`` is the HTTP status the app answers with."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(MONAILabelError.INVALID_INPUT, msg)
        super().__setattr__("status", status)


class ProbUNetInfer(BasicInferTask):
    """Probabilistic U-Net hypotheses via :func:`monai_probunet.inference.predict_hypotheses`.

    Parameters
    ----------
    path : str
        ``model.pt`` (state dict; loaded with ``weights_only=True``).
    config_file : str or list of str
        Bundle config(s) defining ``network_def`` and ``hu_window`` (``bundle/configs/train.yaml``).
    threshold_path : str, optional
        ``presence_threshold.json``; default: next to ``path`` if it exists, else the fallback 0.5 rule.
    """

    def __init__(
        self,
        path: str,
        config_file: str | Sequence[str],
        threshold_path: Optional[str] = None,
        num_samples: int = 16,
        seed: int = 0,
        description: str = "Probabilistic U-Net: S lesion hypotheses at a centre; returns the most frequent variant",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            path=path,
            network=None,
            type=InferType.SEGMENTATION,
            labels={"lesion": 1},
            dimension=2,
            description=description,
            config={"num_samples": num_samples, "seed": seed, "hypotheses": False, "world": False, "frame": "RAS"},
            load_strict=True,
            **kwargs,
        )
        self.config_file = config_file
        self.threshold_path = threshold_path
        self._models: Dict[str, Tuple[torch.nn.Module, Dict[str, Any], Any, float]] = {}

    def is_valid(self) -> bool:
        return bool(self.path) and os.path.isfile(self.path[-1])

    def pre_transforms(self, data: Optional[Dict[str, Any]] = None) -> Sequence[Callable]:
        return []  # predict_hypotheses loads and resamples the image itself (MONAI transforms, inverted after)

    def post_transforms(self, data: Optional[Dict[str, Any]] = None) -> Sequence[Callable]:
        return []

    def inverse_transforms(self, data: Optional[Dict[str, Any]] = None) -> None:
        return None

    def _model(self, device: str) -> Tuple[torch.nn.Module, Dict[str, Any], Any]:
        path = self.path[-1] if self.path else None
        if not path or not os.path.isfile(path):
            raise ProbUNetRequestError(f"model file {path} does not exist: train the bundle first.", status=503)
        mtime = os.stat(path).st_mtime
        cached = self._models.get(device)
        if cached is None or cached[3] != mtime:
            network, settings = load_model(path, self.config_file, device=device)  # weights_only=True
            threshold = self.threshold_path or find_presence_threshold(path)
            self._models[device] = (network, settings, threshold, mtime)
        network, settings, threshold, _ = self._models[device]
        return network, settings, threshold

    def run_inferer(self, data: Dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> Dict[str, Any]:
        try:
            params = parse_params(data)
        except ValueError as e:
            raise ProbUNetRequestError(str(e), status=400) from e
        image_path = data.get("image_path") or data.get("image")
        if not isinstance(image_path, str) or not image_path:
            raise ProbUNetRequestError("no image: give an image id of the datastore or upload a file.", status=404)
        try:
            image, _ = load_ct(image_path)
        except FileNotFoundError as e:
            raise ProbUNetRequestError(str(e), status=404) from e
        except ValueError as e:
            raise ProbUNetRequestError(f"bad image: {e}", status=422) from e
        network, settings, threshold = self._model(str(device))
        center = params.center
        if center is None:
            center = [(s - 1) / 2 for s in image.shape[1:]]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                hyp = predict_hypotheses(
                    image, center, network, world=params.world, frame=params.frame, spacing=settings["spacing"],
                    roi_size=settings["roi_size"], num_samples=params.num_samples, seed=params.seed,
                    threshold=threshold, hu_window=settings["hu_window"], device=device,
                )
        except ValueError as e:
            raise ProbUNetRequestError(str(e), status=400) from e
        affine = torch.as_tensor(hyp.affine)
        if params.hypotheses:
            pred = hyp.labels  # S x *spatial
            if pred.ndim == 3:
                pred = pred[..., None]  # S x H x W x 1: keeps the geometry for the writer
        else:
            pred = hyp.most_frequent_label
            if pred.ndim == 2:
                pred = pred[..., None]  # H x W x 1: the writer drops the affine of 2-D arrays
        data[self.output_label_key] = MetaTensor(torch.as_tensor(np.ascontiguousarray(pred)), affine=affine)
        result = hyp.to_report()
        result["label_content"] = "hypotheses" if params.hypotheses else "most_frequent_variant"
        result["model_path"] = self.path[-1]
        data[self.output_json_key] = result
        data["probunet_hypotheses"] = params.hypotheses
        return data

    def writer(self, data: Dict[str, Any], extension: Optional[str] = None, dtype: Any = None) -> Tuple[Any, Any]:
        if data.get("probunet_hypotheses"):
            n = int(data[self.output_label_key].shape[0])
            data["result_extension"] = ".seg.nrrd"
            data["result_dtype"] = np.uint8
            data["labels"] = [f"hypothesis_{s}" for s in range(n)]
            return Writer(label=self.output_label_key, json=self.output_json_key)(data)
        if dtype is None and not data.get("result_dtype"):
            dtype = np.uint8
        return super().writer(data, extension=extension, dtype=dtype)
