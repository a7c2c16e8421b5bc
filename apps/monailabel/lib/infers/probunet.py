"""The ``probunet`` infer task: S Probabilistic U-Net hypotheses of the lesion the radiologist clicked.

Registered as MONAI Label's click type (``deepgrow``, 2-D: the model answers axial slices; the module sends the
points of the clicked slice), so 3D Slicer's MONAI Label module lists it under "SmartEdit / Deepgrow" and sends the
clicks: ``foreground`` (IJK voxel indices of the volume;
the **first** foreground point is the lesion centre), ``background`` (not used), ``label`` (the segment name),
``slice``. REST clients may give ``center`` instead (voxel indices, or world mm with ``"world": true`` and
``"frame": "RAS" | "LPS"``). A request with neither answers 400 asking for a click: the model never runs at a
guessed position.

``mode`` (options table): ``auto`` (default) follows the lesion from the click through every slice it spans for a
volume (:func:`monai_probunet.predict3d.predict_hypotheses_3d`: 3-D hypotheses, each with its own prior noise on every
slice, a 3-D label, volumes from the 3-D masks; at most ``max_extent_mm``, 40 mm) and answers the clicked slice for a
2-D image or a series of one slice; ``3d`` (those answer 400); ``2d`` (the clicked slice of a volume only).

The label returned follows the presence rule (:mod:`.label_rule`): empty only when the presence count is below the
fitted threshold or under a quarter of S, otherwise the consensus of the lesion-containing hypotheses. Its one
segment is named for a glance at Slicer's segment list (``lesion p=0.62 ambiguous``). With ``{"hypotheses": true}``
all S hypotheses come back as overlapping segments of a ``.seg.nrrd`` (one layer each), named ``h3 variant B 4/16``.
``label_names`` in the reply maps the returned segment names to their label values (for the layered ``.seg.nrrd``:
segment ``s`` is layer ``s`` with value 1, and ``label_names`` gives ``s + 1``, its channel number). The reply JSON
also holds the full report of :meth:`monai_probunet.inference.Hypotheses.to_report`, the rule (``label_rule``) and
``segments``.

The task is MONAI Label's flow over the library's pieces (those of the bundle's ``inference.yaml``):
:meth:`ProbUNetInfer.check_request` first (each request error answers its own status: 400, 404, 422, 503), then
``pre_transforms`` (the checked case, then :func:`~monai_probunet.inference_transforms.inference_preprocessing`'s
transforms), ``inferer`` (:class:`~monai_probunet.inference_transforms.HypothesesInferer`), ``post_transforms``
(:func:`~monai_probunet.inference_transforms.inference_postprocessing`'s transforms, then the answer) and the
writer. In 3-D the inferer step follows the lesion through the slices, running the same pieces on every slice.

A result extension of ``.nrrd`` / ``.seg.nrrd`` (what Slicer asks for) gets a Slicer segmentation file with the
names; ``.dcm`` (and ``output=dicom_seg``) a DICOM SEG referencing the image's source series (DICOMweb datastore);
other extensions (the image's own, e.g. ``.nii.gz``) a plain label image.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from monai_probunet.dicom_series import check_ct_dicom, series_files
from monai_probunet.inference import find_presence_threshold, load_ct, load_model
from monai_probunet.inference_transforms import (
    HypothesesInferer,
    apply_inferer,
    inference_postprocessing,
    inference_preprocessing,
)
from monai_probunet.predict3d import predict_hypotheses_3d

from .dicom_seg import DicomSegError, find_source_series, write_dicom_seg
from .label_rule import hypothesis_segment_names
from .params import parse_params
from .request_errors import ProbUNetRequestError, bad_input_is_400, check_result_dtype, request_device
from .seg_nrrd import write_seg_nrrd

logger = logging.getLogger(__name__)

__all__ = ["AnswerFromHypothesesd", "ProbUNetInfer", "RequestCased"]

#: result extensions answered with a named Slicer segmentation (.seg.nrrd)
NRRD_EXTENSIONS = (".nrrd", ".seg.nrrd")
LESION_COLOR = (0.95, 0.75, 0.1)


class RequestCased:
    """The first pre-transform: the case the library's pieces take, from the checked request.

    Sets ``image`` (the loaded ``MetaTensor``, read from memory by ``load``), ``center`` (voxel, or world mm with
    ``world``), ``world`` and ``frame`` from ``data["probunet"]`` (:meth:`ProbUNetInfer.check_request`).

    Args:
        load: ``(image path, allow_non_ct) -> MetaTensor`` (the task's cached
            :func:`~monai_probunet.inference.load_ct`).
    """

    def __init__(self, load: Callable[[str, bool], MetaTensor]) -> None:
        self.load = load

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        case = data["probunet"]
        d = dict(data)
        d.update(image=self.load(case["image_path"], case["allow_non_ct"]), center=case["center"], world=case["world"],
                 frame=case["frame"])
        return d


class AnswerFromHypothesesd:
    """The last post-transform: the reply of the task from ``data["hypotheses"]`` (:meth:`ProbUNetInfer.answer`).

    Args:
        task: The infer task.
    """

    def __init__(self, task: "ProbUNetInfer") -> None:
        self.task = task

    def __call__(self, data: Dict[str, Any]) -> Dict[str, Any]:
        return self.task.answer(data)


def _variant_color(rank: int) -> Tuple[float, float, float]:
    palette = [(0.95, 0.75, 0.1), (0.2, 0.6, 1.0), (0.9, 0.3, 0.3), (0.3, 0.8, 0.4), (0.7, 0.4, 0.9),
               (1.0, 0.5, 0.0), (0.0, 0.8, 0.8), (0.8, 0.8, 0.8)]
    return palette[rank % len(palette)]


class ProbUNetInfer(BasicInferTask):
    """Probabilistic U-Net hypotheses of a clicked lesion: the library's inference pieces in MONAI Label's flow.

    Args:
        path: ``model.pt`` (state dict; loaded with ``weights_only=True``).
        config_file: Bundle config(s) defining ``network_def`` and ``hu_window`` (``bundle/configs/train.yaml``).
        threshold_path: ``presence_threshold.json``; default: next to ``path`` if it exists, else the fallback 0.5 rule.
        num_samples, seed: Defaults of the request parameters (shown in Slicer's options table).
    """

    def __init__(
        self,
        path: str,
        config_file: str | Sequence[str],
        threshold_path: Optional[str] = None,
        num_samples: int = 16,
        seed: int = 0,
        description: str = (
            "Probabilistic U-Net: click the lesion centre; S hypotheses; the label follows the presence rule "
            "(segment name: presence probability and ambiguity)"
        ),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            path=path,
            network=None,
            type=InferType.DEEPGROW,
            labels={"lesion": 1},
            dimension=2,
            description=description,
            config={"num_samples": num_samples, "seed": seed, "hypotheses": False, "mode": ["auto", "3d", "2d"],
                    "max_extent_mm": 40.0},
            load_strict=True,
            **kwargs,
        )
        self.config_file = config_file
        self.threshold_path = threshold_path
        self._models: Dict[str, Tuple[torch.nn.Module, Dict[str, Any], Any, float]] = {}
        self._image_cache: Optional[Tuple[Tuple[str, int, int, bool], Any]] = None  # the last image and its key
        self._image_lock = threading.Lock()  # one reader at a time: a click waits for the prefetch of its image

    # ------------------------------------------------------------------------------------------ model file

    @property
    def model_file(self) -> Optional[str]:
        return self.path[-1] if self.path else None

    def model_file_exists(self) -> bool:
        return bool(self.model_file) and os.path.isfile(self.model_file)

    def is_valid(self) -> bool:
        return True  # listed in /info/ even without a model file: info() says so and infer answers 503

    def info(self) -> Dict[str, Any]:
        info = super().info()
        info["model_file"] = self.model_file
        info["model_file_exists"] = self.model_file_exists()
        if not info["model_file_exists"]:
            info["description"] = f"UNAVAILABLE: model file {self.model_file} does not exist. " + info["description"]
        return info

    def _model(self, device: str) -> Tuple[torch.nn.Module, Dict[str, Any], Any]:
        path = self.model_file
        if not self.model_file_exists():
            raise ProbUNetRequestError(
                f"model file {path} does not exist: train the bundle (run training) or start the server with "
                f"--conf model_path <model.pt>.",
                status=503,
            )
        mtime = os.stat(path).st_mtime
        cached = self._models.get(device)
        if cached is None or cached[3] != mtime:
            network, settings = load_model(path, self.config_file, device=device)  # weights_only=True
            threshold = self.threshold_path or find_presence_threshold(path)
            self._models[device] = (network, settings, threshold, mtime)
        network, settings, threshold, _ = self._models[device]
        return network, settings, threshold

    def warmup(self) -> float:
        """Load the model and run one request on a small synthetic slice (reader, model, writers) so that the
        first click is as fast as the next. Returns the seconds it took."""
        import nibabel as nib

        start = time.perf_counter()
        _, settings, _ = self._model(name_to_device("cuda"))  # the device requests run on (cpu without CUDA)
        spacing = np.broadcast_to(np.asarray(settings["spacing"], dtype=np.float64), (2,))
        roi = np.broadcast_to(np.asarray(settings["roi_size"], dtype=np.int64), (2,))
        n = [int(r) + 16 for r in roi]  # the model's whole field plus a margin, at the model's spacing
        with tempfile.TemporaryDirectory(prefix="probunet_warmup_") as tmp:
            img = np.full(n, -800.0, np.float32)
            img[n[0] // 2 - 4: n[0] // 2 + 4, n[1] // 2 - 4: n[1] // 2 + 4] = 40.0
            path = os.path.join(tmp, "warmup.nii.gz")
            nib.save(nib.Nifti1Image(img, np.diag([spacing[0], spacing[1], 1.0, 1.0])), path)
            vol_path = os.path.join(tmp, "warmup3d.nii.gz")  # the 3-D path too (growth through 3 slices)
            nib.save(nib.Nifti1Image(np.repeat(img[..., None], 3, axis=2),
                                     np.diag([spacing[0], spacing[1], 2.5, 1.0])), vol_path)
            for image, center, ext, hyp in (
                (path, [n[0] // 2, n[1] // 2], ".nii.gz", False), (path, [n[0] // 2, n[1] // 2], ".nrrd", False),
                (path, [n[0] // 2, n[1] // 2], ".nrrd", True), (vol_path, [n[0] // 2, n[1] // 2, 1], ".nrrd", False),
            ):
                out, _ = self({"image": image, "center": center, "num_samples": 2, "hypotheses": hyp,
                               "result_extension": ext, "logging": "WARNING"})
                if isinstance(out, str) and os.path.exists(out):
                    os.remove(out)
        return time.perf_counter() - start

    # ------------------------------------------------------------------------------------------ request checks

    def check_request(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """Check a request before MONAI Label's flow runs; a request the task cannot serve gets its own status.

        In this order: the parameters (400, :func:`.params.parse_params`), the model file (503), the image (400
        without one, 404 missing, 422 unreadable or not CT), the click against the image (400) and the mode (400;
        a DICOM source series that is not one evenly spaced CT series: 422). The image is loaded here (and kept,
        :meth:`_load`), so the pre-transforms read it from memory.

        Args:
            request: The request as MONAI Label passes it (the task's ``config`` defaults under it).

        Returns:
            The request plus ``probunet``: ``{"params", "center", "world", "frame", "three_d", "image_path",
            "timings"}`` (the case the pre-transforms build).

        Raises:
            ProbUNetRequestError: With the HTTP status the app answers.
        """
        req = {**self._config, **request}
        try:
            params = parse_params(req)
        except ValueError as e:
            raise ProbUNetRequestError(str(e), status=400) from e
        check_result_dtype(req.get("result_dtype"))
        device = request_device(req.get("device"))
        t0 = time.perf_counter()
        self._model(device)
        t1 = time.perf_counter()
        image_path = req.get("image_path") or req.get("image")
        if not isinstance(image_path, str) or not image_path:
            raise ProbUNetRequestError("no image: give an image id of the datastore or upload a file.", status=400)
        try:
            image, kept = self._read(image_path, allow_non_ct=params.allow_non_ct)
        except FileNotFoundError as e:
            raise ProbUNetRequestError(str(e), status=404) from e
        except ValueError as e:
            raise ProbUNetRequestError(f"bad image: {e}", status=422) from e
        t2 = time.perf_counter()
        center = list(params.center)
        if params.from_click and image.ndim == 3 and len(center) == 3:
            # a 2-D image is one slice to Slicer: its clicks are [i, j, 0]
            if abs(center[2]) > 0.5:
                raise ProbUNetRequestError(
                    f"foreground point {params.center} lies on slice {center[2]:g} of a single-slice image.")
            center = center[:2]
        spatial = [int(n) for n in image.shape[1:]]
        if params.from_click and len(center) == len(spatial) and any(
                not -0.5 <= c < n - 0.5 for c, n in zip(center, spatial)):
            raise ProbUNetRequestError(f"foreground point {params.center} lies outside the image "
                                       f"({' x '.join(map(str, spatial))} voxels): place it on the lesion.")
        volume = image.ndim == 4 and image.shape[-1] > 1  # a series of one slice is answered in 2-D: its area
        three_d = params.mode == "3d" or (params.mode == "auto" and volume)
        if three_d and not volume:
            raise ProbUNetRequestError(
                f"mode 3d needs a volume; {os.path.basename(image_path)} is a single 2-D slice: use mode auto or 2d.")
        checked = {
            "params": params, "center": center, "world": params.world and not params.from_click,
            "frame": params.frame, "three_d": three_d, "image_path": image_path, "allow_non_ct": params.allow_non_ct,
            "timings": {"model": round(t1 - t0, 3), "load_image": round(t2 - t1, 3), "image_kept": kept},
            "checked_at": t2,
        }
        return {**request, "probunet": checked}

    # ------------------------------------------------------------------------------------------ MONAI Label's flow

    def inference_pieces(self, data: Optional[Dict[str, Any]] = None) -> Tuple[Compose, HypothesesInferer, Compose]:
        """``(preprocessing, inferer, postprocessing)`` of a request: the bundle's ``inference.yaml`` pieces, built by
        the same factories with the model's settings and the request's S and seed (the task's defaults without a
        checked request)."""
        device = request_device((data or {}).get("device") or self._config.get("device"))
        _, settings, threshold = self._model(device)
        params = (data or {}).get("probunet", {}).get("params")
        num_samples = params.num_samples if params else int(self._config.get("num_samples", 16))
        seed = params.seed if params else int(self._config.get("seed", 0))
        return (
            inference_preprocessing(
                settings["spacing"], roi_size=settings["roi_size"], hu_window=settings["hu_window"],
                num_samples=num_samples, allow_non_ct=bool(params and params.allow_non_ct),
            ),
            HypothesesInferer(num_samples=num_samples, seed=seed),
            inference_postprocessing(threshold),
        )

    def pre_transforms(self, data: Optional[Dict[str, Any]] = None) -> Sequence[Callable]:
        """:class:`RequestCased` (the checked case, the image from memory), then for one slice the library's
        preprocessing (:func:`~monai_probunet.inference_transforms.inference_preprocessing`, the bundle's
        ``preprocessing``). In 3-D the inferer runs those pieces on every slice it follows."""
        first: list = [RequestCased(self._load)]
        if data is not None and data.get("probunet", {}).get("three_d"):
            return first
        return first + list(self.inference_pieces(data)[0].transforms)

    def inferer(self, data: Optional[Dict[str, Any]] = None) -> HypothesesInferer:
        """The request's :class:`~monai_probunet.inference_transforms.HypothesesInferer` (the bundle's ``inferer``)."""
        return self.inference_pieces(data)[1]

    def post_transforms(self, data: Optional[Dict[str, Any]] = None) -> Sequence[Callable]:
        """For one slice the library's postprocessing (``Invertd`` back onto the input grid, presence and variants:
        :func:`~monai_probunet.inference_transforms.inference_postprocessing`, the bundle's ``postprocessing``),
        then :class:`AnswerFromHypothesesd` (the label, the segments and the reply JSON)."""
        last: list = [AnswerFromHypothesesd(self)]
        if data is not None and data.get("probunet", {}).get("three_d"):
            return last
        return list(self.inference_pieces(data)[2].transforms) + last

    def inverse_transforms(self, data: Optional[Dict[str, Any]] = None) -> None:
        return None  # the postprocessing inverts the model grid (Invertd) itself

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        return self._model(str(device))[0]

    def run_pre_transforms(self, data: Dict[str, Any], transforms: Sequence[Callable]) -> Dict[str, Any]:
        with bad_input_is_400():
            return super().run_pre_transforms(data, transforms)

    def run_inferer(self, data: Dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> Dict[str, Any]:
        """The inferer on the model input of a slice
        (:func:`~monai_probunet.inference_transforms.apply_inferer`, as the library runs it); for a volume the
        lesion followed through its slices (:func:`~monai_probunet.predict3d.predict_hypotheses_3d` with this
        request's pieces)."""
        network = self._get_network(device, data)
        case = data["probunet"]
        with bad_input_is_400():
            if not case["three_d"]:
                return apply_inferer(data, network, self.inferer(data), device=device)
            _, settings, threshold = self._model(str(device))
            pre, inferer, post = self.inference_pieces(data)
            data["hypotheses"] = predict_hypotheses_3d(
                data[self.input_key], case["center"], network, world=case["world"], frame=case["frame"],
                spacing=settings["spacing"], roi_size=settings["roi_size"], num_samples=inferer.num_samples,
                seed=inferer.seed, threshold=threshold, hu_window=settings["hu_window"], device=device,
                max_extent_mm=case["params"].max_extent_mm, preprocessing=pre, inferer=inferer, postprocessing=post,
                allow_non_ct=case["allow_non_ct"],
            )
        return data

    def run_post_transforms(self, data: Dict[str, Any], transforms: Sequence[Callable]) -> Dict[str, Any]:
        with bad_input_is_400():
            return super().run_post_transforms(data, transforms)

    def answer(self, data: Dict[str, Any]) -> Dict[str, Any]:
        """The reply from the request's :class:`~monai_probunet.hypotheses.Hypotheses` (``data["hypotheses"]``):
        the label (``pred``: the presence-rule label, or all S hypotheses as layers), its segments and the JSON."""
        case = data["probunet"]
        params, hyp = case["params"], data["hypotheses"]
        t3 = time.perf_counter()
        label, decision = hyp.presence_rule_label()  # the library's rule, in 3-D applied to the 3-D hypotheses
        if params.hypotheses:
            names = hypothesis_segment_names(hyp.variants, hyp.num_samples)
            rank = {s: r for r, v in enumerate(hyp.variants) for s in v.members}
            pred = hyp.labels  # S x *spatial
            segments = [
                {"name": n, "label_value": s + 1, "layer": s, "hypothesis": s, "variant": rank[s],
                 "color": _variant_color(rank[s])}
                for s, n in enumerate(names)
            ]
        else:
            pred = label
            segments = [{"name": hyp.presence_label_report()["name"], "label_value": 1, "layer": 0,
                         "color": LESION_COLOR}]
        if pred.ndim == (3 if params.hypotheses else 2):
            pred = pred[..., None]  # a slice: H x W x 1 (the writers drop the affine of 2-D arrays)
        data[self.output_label_key] = MetaTensor(
            torch.as_tensor(np.ascontiguousarray(pred, dtype=np.uint8)), affine=torch.as_tensor(hyp.affine)
        )
        result = hyp.to_report()
        result.setdefault("mode", "2d")
        result.update(
            label_content="hypotheses" if params.hypotheses else "presence_rule_consensus",
            label_rule=decision.rule,
            label_shows_lesion=bool(decision.show_lesion) if not params.hypotheses else None,
            label_voxels=int(np.count_nonzero(pred)) if not params.hypotheses else None,
            center_source=params.center_source,
            background_points="not used",
            segments=[{k: v for k, v in s.items() if k != "color"} for s in segments],
            model_path=self.model_file,
            timings_s={**case["timings"], "hypotheses": round(t3 - case["checked_at"], 3)},
        )
        data[self.output_json_key] = result
        data["probunet_segments"] = segments
        data["probunet_layered"] = params.hypotheses
        return data

    def prefetch(self, image_path: str) -> None:
        """Read ``image_path`` into the one-image cache of :meth:`_load` in a background thread.

        Called when 3D Slicer opens an image (``GET /datastore/image``): the radiologist's first click then finds
        it in memory, as the next clicks do, instead of waiting for it to be read (``apps/monailabel/README.md``: a
        512 x 512 x 200 series, measured). A click that comes first waits for the read and uses it. A problem with
        the image is left for the click to answer."""

        def read() -> None:
            start = time.perf_counter()
            try:
                _, kept = self._read(image_path)
            except Exception as e:  # noqa: BLE001 -- the click on the image reports it
                logger.debug(f"prefetch of {image_path}: {type(e).__name__}: {e}")
                return
            if not kept:
                logger.info(f"{os.path.basename(image_path)}: read before its first click "
                            f"({time.perf_counter() - start:.1f} s)")

        threading.Thread(target=read, name="probunet-prefetch", daemon=True).start()

    def _load(self, image_path: str, allow_non_ct: bool = False) -> MetaTensor:
        """:meth:`_read`'s image (the pre-transforms' reader)."""
        return self._read(image_path, allow_non_ct)[0]

    def _read(self, image_path: str, allow_non_ct: bool = False) -> Tuple[MetaTensor, bool]:
        """:func:`load_ct` of ``image_path`` and whether it was kept from before; the last image is kept (same path,
        mtime and size: the same file), so further clicks on the image a radiologist is reading skip reading it
        again.

        An image converted from a DICOM series (MONAI Label's DICOMweb cache: the series' files in the folder beside
        it) is read only if the series' own headers pass :func:`~monai_probunet.dicom_series.check_ct_dicom` (CT, pixel
        spacing, one evenly spaced series): the conversion keeps none of them and would fill in 1 mm pixels."""
        with self._image_lock:
            st = os.stat(image_path) if os.path.isfile(image_path) else None
            key = (os.path.abspath(image_path), st.st_mtime_ns, st.st_size, allow_non_ct) if st else None
            if key is not None and self._image_cache is not None and self._image_cache[0] == key:
                return self._image_cache[1], True
            series = find_source_series(image_path) if st else None
            dicom = series_files(series) if series else []
            if dicom:
                check_ct_dicom(dicom, f"series {series.name}")
            image, _ = load_ct(image_path, allow_non_ct=allow_non_ct)
            if key is not None:
                self._image_cache = (key, image)
            return image, False

    def writer(self, data: Dict[str, Any], extension: Optional[str] = None, dtype: Any = None) -> Tuple[Any, Any]:
        ext = data.get("result_extension") or ""
        segments = data["probunet_segments"]
        if ext == ".dcm":
            return self._write_dicom_seg(data, segments)
        if data.get("probunet_layered") or ext in NRRD_EXTENSIONS:
            label = data[self.output_label_key]
            arr = label.array if isinstance(label, MetaTensor) else np.asarray(label)
            fd, out = tempfile.mkstemp(suffix=".seg.nrrd")
            os.close(fd)
            write_seg_nrrd(
                out, arr.astype(np.uint8, copy=False), np.asarray(label.affine, dtype=np.float64), segments,
                layered=bool(data.get("probunet_layered")),
                crop=bool(data.get("probunet_layered")) and data[self.output_json_key].get("mode") == "3d",
            )
            return out, data[self.output_json_key]
        if dtype is None and not data.get("result_dtype"):
            dtype = np.uint8
        return super().writer(data, extension=extension, dtype=dtype)

    def _write_dicom_seg(self, data: Dict[str, Any], segments: Sequence[Dict[str, Any]]) -> Tuple[str, Dict]:
        image_path = str(data.get("image_path") or "")
        series = find_source_series(image_path)
        if series is None:
            raise ProbUNetRequestError(
                f"a DICOM SEG result needs the image's DICOM series (a DICOMweb datastore: start the server with "
                f"--studies http://HOST:8042/dicom-web, or a DICOM series folder); {os.path.basename(image_path)} "
                f"has none. Ask for result_extension .nrrd or .nii.gz instead.", status=400)
        label = data[self.output_label_key]
        arr = np.asarray(label.array if isinstance(label, MetaTensor) else label, dtype=np.uint8)
        layers = arr if data.get("probunet_layered") else (arr == 1)[None]
        fd, out = tempfile.mkstemp(suffix=".dcm")
        os.close(fd)
        try:
            info = write_dicom_seg(out, layers, np.asarray(label.affine, dtype=np.float64), segments, series)
        except DicomSegError as e:
            os.remove(out)
            raise ProbUNetRequestError(f"DICOM SEG: {e}", status=422) from e
        result = data[self.output_json_key]
        result["dicom_seg"] = {**info, "segments": [s["name"] for s in segments]}
        return out, result

    def __call__(self, request: Dict[str, Any], callbacks: Any = None) -> Tuple[Any, Dict[str, Any]]:
        """:meth:`check_request`, then MONAI Label's flow: :meth:`pre_transforms`, :meth:`run_inferer`,
        :meth:`post_transforms`, :meth:`writer`."""
        request = self.check_request(request)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            out, result = super().__call__(request, callbacks)
        # MONAI Label sets label_names to the task's labels after the writer: name the segments really returned
        segments = result.get("segments")
        if segments:
            result["label_names"] = {s["name"]: s["label_value"] for s in segments}
        return out, result
