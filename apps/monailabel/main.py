"""MONAI Label app serving the Probabilistic U-Net (infer task ``probunet``).

Start (from the repository root, in the label venv built by ``apps/monailabel/setup_venv.sh``)::

    source .venv-label/bin/activate
    monailabel start_server --app apps/monailabel --studies /path/to/images --conf zoo_source local \
        --host 127.0.0.1 --port 8000 [--conf model_path bundle/models/model.pt]

In 3D Slicer's MONAI Label module the task appears under "SmartEdit / Deepgrow": place a foreground point on the
lesion centre. REST request (``foreground`` as Slicer sends it, IJK voxel indices; or ``center``)::

    curl -X POST "http://127.0.0.1:8000/infer/probunet?image=<image id>&output=all" \
        -F 'params={"foreground": [[i, j, k]], "num_samples": 16, "seed": 0}'

Bad requests answer 4xx with a ``detail`` message: 404 unknown model or image, 400 no lesion point, bad parameters,
``params`` not a JSON object, an empty image id or a centre outside the image, 422 an unreadable / non-CT / NaN
image, 503 no model file (said at start in the log and in ``/info/``).

The model is loaded and one request on a synthetic slice is run at start (``--conf warmup false`` skips it), so
the first click is as fast as the next.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict

from fastapi import HTTPException
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib.activelearning import Uncertainty
from lib.configs.probunet import ProbUNetConfig
from lib.dicomweb_datastore import SegDICOMWebDatastore
from lib.infers.params import parse_bool
from lib.prefetch import install as install_prefetch
from lib.rater_datastore import RaterDatastore, RaterRules, next_sample_rater
from lib.request_checks import install as install_request_checks
from lib.studies_check import studies_notes, studies_problem
from monai_probunet.bundle_utils import quiet_optional_decoder

logger = logging.getLogger(__name__)


class ProbUNetApp(MONAILabelApp):
    """MONAI Label app with the ``probunet`` infer task, the ``probunet_raters`` inter-rater view and the
    ``probunet`` train task."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
        quiet_optional_decoder()
        problem = studies_problem(studies)
        if problem is not None:  # MONAI Label would fail with a traceback: one line, exit status 2
            logger.error(problem)
            logging.shutdown()
            os._exit(2)
        self.model_dir = os.path.join(app_dir, "model")
        self.models: Dict[str, ProbUNetConfig] = {}
        for name, cls in {"probunet": ProbUNetConfig}.items():
            config = cls()
            config.init(name, self.model_dir, conf, None)
            self.models[name] = config
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MONAILabel - Probabilistic U-Net",
            description="Many plausible lesion outlines per image (Kohl et al. 2018)",
            version="0.1.0",
            labels={"lesion": 1},
        )
        install_request_checks()
        install_prefetch()  # the image Slicer opens is read before its first click
        if parse_bool(conf.get("warmup", "true"), "warmup"):
            self.warmup()

    def warmup(self) -> None:
        """Load every task's model and run one synthetic request (reader, model, writers)."""
        for name, task in self._infers.items():
            if not getattr(task, "model_file_exists", lambda: True)():
                continue  # said by the task config at start
            if hasattr(task, "warmup"):
                start = time.perf_counter()
                try:
                    task.warmup()
                except Exception as e:  # noqa: BLE001 -- the server still starts; infer says what is wrong
                    msg = getattr(e, "msg", None) or f"{type(e).__name__}: {e}"
                    logger.error(f"{name}: the model could not be loaded and run at start: {msg}")
                    continue
                logger.info(f"{name}: model loaded and warmed up in {time.perf_counter() - start:.1f} s")

    def _download_dcmqi_tools(self) -> None:
        """MONAI Label downloads dcmqi from GitHub when the studies are DICOMweb; this app writes every DICOM SEG
        (infer results and submitted final labels) with highdicom and never downloads anything."""
        logger.info("DICOMweb datastore: DICOM SEG written with highdicom (no dcmqi download)")

    def init_datastore(self) -> Any:
        """A local studies folder keeps every rater's label side by side (:class:`lib.rater_datastore.RaterDatastore`:
        tag ``rater_<name>``, at most ``--conf max_raters`` raters per image, default 4 = the model's graders; an
        upload never replaces a stored image)."""
        store = super().init_datastore()
        if type(store) is LocalDatastore:
            store.__class__ = RaterDatastore  # same state; label saving and the labelled/unlabelled lists differ
            store.max_raters = int(self.conf.get("max_raters", 4))
            extensions = settings.MONAI_LABEL_DATASTORE_FILE_EXT
            for note in studies_notes(self.studies, len(store.list_images()), extensions):
                logger.warning(note)
        return store

    def _init_dicomweb_datastore(self) -> Any:
        """MONAI Label's DICOMweb datastore, keeping every rater's submitted label as a highdicom SEG in the server
        (:class:`lib.dicomweb_datastore.SegDICOMWebDatastore`: the raters' rules of a local studies folder)."""
        store = super()._init_dicomweb_datastore()
        if type(store) is DICOMWebDatastore:
            store.__class__ = SegDICOMWebDatastore  # same state; the raters' SEGs and the answers to a server down
            store.max_raters = int(self.conf.get("max_raters", 4))
            problem = store.answer_problem()
            if problem is not None:  # the app still starts: the server may come up later
                logger.error(f"{problem} Until then, 3D Slicer lists no image and every request answers 502.")
        return store

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, config in self.models.items():
            task = config.infer()
            infers.update(task if isinstance(task, dict) else {name: task})
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        """The ``probunet`` train task: raters' outlines -> bundle training -> swapped in if its GED is lower."""
        trainers: Dict[str, TrainTask] = {}
        for name, config in self.models.items():
            task = config.trainer()
            if task is not None:
                trainers[name] = task
        return trainers

    def init_strategies(self) -> Dict[str, Strategy]:
        strategies: Dict[str, Strategy] = {"random": Random(), "first": First()}
        if "probunet" in self._infers:  # the unlabelled image whose hypotheses disagree most
            task = self._infers["probunet"]
            strategies["uncertainty"] = Uncertainty(
                task, num_samples=int(task._config.get("num_samples", 16)), seed=int(task._config.get("seed", 0)))
        return strategies

    def next_sample(self, request: Dict[str, Any]) -> Dict[str, Any]:
        """MONAILabelApp.next_sample, the strategy choosing among the images to offer the request's rater.

        With a rater (``rater``, else ``client_id``: 3D Slicer's Client/User-ID; not its default ``user-xyz``) the
        strategy is given the datastore as that rater sees it
        (:meth:`lib.rater_datastore.RaterDatastore.for_rater`): images with fewer than ``max_raters`` raters that
        this rater has not outlined. Without one, the images no rater has outlined. An unknown strategy answers 404
        naming the available ones. The image chosen is read ahead of its first click (:meth:`read_ahead`): 3D Slicer
        opens it next, from its path where it can.
        """
        strategy = request.get("strategy") or "random"
        if strategy not in self._strategies:
            raise HTTPException(status_code=404, detail=f"unknown strategy {strategy!r}; available: "
                                f"{sorted(self._strategies)}")
        store = self.datastore()
        rater = next_sample_rater(request)
        if rater is not None and isinstance(store, RaterRules):
            store = store.for_rater(rater)
        sample = self._strategies[strategy](request, store)
        if not sample or not sample.get("id"):
            logger.info(f"next sample ({strategy}) for {rater or 'any rater'}: no image left")
            return {}
        sample["path"] = self._datastore.get_image_uri(sample["id"])
        logger.info(f"next sample ({strategy}) for {rater or 'any rater'}: {sample['id']}")
        if self._auto_update_scoring:  # as MONAILabelApp.next_sample
            self.async_scoring(None)
        if sample["path"]:
            self.read_ahead(path=sample["path"])
        return sample

    def read_ahead(self, image_id: str | None = None, path: str | None = None) -> None:
        """Have the ``probunet`` task read an image (its datastore id or its file) in the background, so that the
        radiologist's first click on it finds it in memory (``lib/prefetch.py``); nothing where it cannot."""
        task = self._infers.get("probunet")
        if task is None or not hasattr(task, "prefetch"):
            return
        if path is None:
            try:
                path = self.datastore().get_image_uri(image_id)  # in the datastore's cache by now: no download
            except Exception as e:  # noqa: BLE001 -- a click on the image reports any problem with it
                logger.debug(f"read ahead of {image_id}: {type(e).__name__}: {e}")
                return
        task.prefetch(path)

    def infer(self, request: Dict[str, Any], datastore: Any = None) -> Dict[str, Any]:
        """MONAILabelApp.infer with HTTP 4xx answers for requests that cannot be served."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available: {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and not image.strip():
            raise HTTPException(status_code=400, detail="image id is empty: give an image id of the datastore.")
        store = datastore if datastore else self.datastore()
        if isinstance(image, str) and not os.path.exists(image):
            try:
                uri = store.get_image_uri(image)
            except HTTPException:
                raise
            except Exception as e:  # noqa: BLE001 -- a DICOMweb datastore raises HTTP errors for an unknown series
                logger.warning(f"infer {model}: image {image!r}: {type(e).__name__}: {e}")
                uri = None
            if not uri:
                raise HTTPException(status_code=404, detail=f"unknown image {image!r}: not in the datastore")
        try:
            store_seg = parse_bool(request.get("store_dicom_seg", False), "store_dicom_seg")
        except ValueError as e:
            raise HTTPException(status_code=400, detail=str(e)) from None
        if store_seg:
            if not hasattr(store, "_client") or not hasattr(store._client, "store_instances"):
                raise HTTPException(status_code=400, detail="store_dicom_seg needs a DICOMweb datastore "
                                    "(--studies http://HOST:8042/dicom-web).")
            request = {**request, "result_extension": ".dcm"}
        try:
            result = super().infer(request, datastore)
        except MONAILabelException as e:
            status = getattr(e, "status", 400 if e.error == MONAILabelError.INVALID_INPUT else 500)
            logger.warning(f"infer {model} on {image}: {status} {e.msg}")
            raise HTTPException(status_code=status, detail=e.msg) from e
        if store_seg:
            self._store_dicom_seg(store, result)
        return result

    @staticmethod
    def _store_dicom_seg(store: Any, result: Dict[str, Any]) -> None:
        """STOW-RS the SEG of ``result`` to the DICOMweb server; the reply's ``dicom_seg.stored_to`` says where."""
        import pydicom

        try:
            store._client.store_instances(datasets=[pydicom.dcmread(result["file"])])
        except Exception as e:  # noqa: BLE001 -- network / server errors
            raise HTTPException(status_code=502, detail=f"could not store the DICOM SEG in {store.name()}: {e}") from e
        result["params"]["dicom_seg"]["stored_to"] = store.name()
        logger.info(f"stored DICOM SEG {result['params']['dicom_seg']['SOPInstanceUID']} in {store.name()}")
