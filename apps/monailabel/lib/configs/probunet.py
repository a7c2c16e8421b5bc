"""TaskConfig of the ``probunet`` tasks: the click infer task, the inter-rater view ``probunet_raters`` and the
train task (the raters' outlines -> the bundle's training -> the new model in use if its validation GED is lower)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

from lib.infers.interrater import InterRaterInfer
from lib.infers.probunet import ProbUNetInfer
from lib.trainers import ProbUNetTrain

logger = logging.getLogger(__name__)

#: the repository root (apps/monailabel/lib/configs/probunet.py -> 4 levels up)
REPO_ROOT = Path(__file__).resolve().parents[4]


class ProbUNetConfig(TaskConfig):
    """Reads ``--conf`` keys: ``model_path`` (default ``<repo>/bundle/models/model.pt``), ``network_config``
    (default ``<repo>/bundle/configs/train.yaml``; comma-separated for several files), ``threshold_path``
    (default: ``presence_threshold.json`` next to the model), ``num_samples`` (16), ``seed`` (0), ``warmup`` (true: load the model and run one request at start),
    ``train_max_epochs`` (5) and ``train_val_interval`` (1): the train task's defaults (CPU-sized).
    ``zoo_source`` and other keys are accepted and ignored (the app never downloads anything)."""

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs: Any) -> None:
        super().init(name, model_dir, conf, planner, **kwargs)
        self.path = conf.get("model_path", str(REPO_ROOT / "bundle" / "models" / "model.pt"))
        config = conf.get("network_config", str(REPO_ROOT / "bundle" / "configs" / "train.yaml"))
        self.config_file = [c.strip() for c in config.split(",") if c.strip()]
        self.threshold_path = conf.get("threshold_path") or None
        self.num_samples = int(conf.get("num_samples", 16))
        self.seed = int(conf.get("seed", 0))
        self.labels = {"lesion": 1}
        self.train_max_epochs = int(conf.get("train_max_epochs", 5))
        self.train_val_interval = int(conf.get("train_val_interval", 1))
        if not os.path.isfile(self.path):
            logger.error(
                f"{name}: model file {self.path} does not exist: /info/ marks the model UNAVAILABLE and infer answers "
                f"503 until it exists (train the bundle, or start with --conf model_path <model.pt>)."
            )

    def infer(self) -> Union[InferTask, Dict[str, InferTask]]:
        kwargs = dict(path=self.path, config_file=self.config_file, threshold_path=self.threshold_path,
                      num_samples=self.num_samples, seed=self.seed)
        return {self.name: ProbUNetInfer(**kwargs), f"{self.name}_raters": InterRaterInfer(**kwargs)}

    def trainer(self) -> Optional[TrainTask]:
        return ProbUNetTrain(
            model_path=self.path,
            config_file=self.config_file,
            work_dir=os.path.join(self.model_dir, f"{self.name}_train"),
            max_epochs=self.train_max_epochs,
            val_interval=self.train_val_interval,
            num_samples=self.num_samples,
            seed=self.seed,
        )
