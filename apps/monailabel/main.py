"""MONAI Label app serving the Probabilistic U-Net (infer task ``probunet``).

Start (from the repository root, in the label venv built by ``apps/monailabel/setup_venv.sh``)::

    source .venv-label/bin/activate
    monailabel start_server --app apps/monailabel --studies /path/to/images --conf zoo_source local \
        --host 127.0.0.1 --port 8000 [--conf model_path bundle/models/model.pt]

Request::

    curl -X POST "http://127.0.0.1:8000/infer/probunet?image=<image id>&output=all" \
        -F 'params={"center": [x, y, z], "num_samples": 16, "seed": 0}'

Bad requests answer 4xx with a ``detail`` message: 404 unknown model or image, 400 bad parameters or a centre
outside the image, 422 an unreadable / non-CT / NaN image, 503 no model file.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

from lib.configs.probunet import ProbUNetConfig

logger = logging.getLogger(__name__)


class ProbUNetApp(MONAILabelApp):
    """MONAI Label app with the ``probunet`` infer task (no trainer; train with the bundle)."""

    def __init__(self, app_dir: str, studies: str, conf: Dict[str, str]) -> None:
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

    def init_infers(self) -> Dict[str, InferTask]:
        infers: Dict[str, InferTask] = {}
        for name, config in self.models.items():
            task = config.infer()
            infers.update(task if isinstance(task, dict) else {name: task})
        return infers

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {}

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def infer(self, request: Dict[str, Any], datastore: Any = None) -> Dict[str, Any]:
        """MONAILabelApp.infer with HTTP 4xx answers for requests that cannot be served."""
        model = request.get("model")
        if model not in self._infers:
            raise HTTPException(status_code=404, detail=f"unknown model {model!r}; available: {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str):
            store = datastore if datastore else self.datastore()
            if not image or (not os.path.exists(image) and not store.get_image_uri(image)):
                raise HTTPException(status_code=404, detail=f"unknown image {image!r}: not in the datastore")
        try:
            return super().infer(request, datastore)
        except MONAILabelException as e:
            status = getattr(e, "status", 400 if e.error == MONAILabelError.INVALID_INPUT else 500)
            logger.warning(f"infer {model} on {image}: {status} {e.msg}")
            raise HTTPException(status_code=status, detail=e.msg) from e
