"""The ``probunet`` train task: the raters' outlines of the datastore -> the bundle's training -> a better model in use.

``POST /train/probunet`` (3D Slicer: "Train") runs, in MONAI Label's background train process:

1. **export**: every image that a rater outlined, with all its raters' labels, as a multi-grader dataset
   (:func:`monai_probunet.data.raters.export_rater_dataset`) in ``<app>/model/probunet_train/<run>/dataset``: a CT
   volume as 2-D crops on the grid of the model in use (``model.json`` beside it, else the config's
   ``infer_spacing`` / ``infer_roi_size``), one per lesion and axial slice it spans; a 2-D candidate crop as it is
   (all of one size). The datastore is the local studies folder, or on a DICOMweb server the cache into which every
   rater's latest SEG is read first (``sync_rater_labels``);
2. **train**: ``python -m monai.bundle run training --config_file "[<network config(s)>]" --dataset_name folder
   --dataset_dir <export> --ckpt_dir <run>/models --max_epochs N --val_interval V`` in a subprocess (plus
   ``finetune.yaml --pretrained_path <current model>`` to start from the model in use, MONAI Label's ``pretrained``);
   its log lines are the task's ``details`` in ``GET /train/``;
3. **compare**: the new ``model.pt`` (the weights the bundle's training ends with) and the model in use are evaluated
   on the same validation split of the export (S hypotheses, same seed; :mod:`.model_swap`);
4. **swap** only if the new GED is lower: the model in use is kept as ``<stem>_before_<time>.pt`` beside it and the
   model file is replaced atomically; the infer task reloads it at its next request (new modification time).

The outcome (GEDs, swapped or not, backup, run folder) is the last line of ``details``, ``train_stats`` in
``/info/`` and ``<app>/model/probunet_train/train_stats.json``. Request parameters (``params`` of the POST, shown in
Slicer's train options): ``max_epochs`` (default 5: CPU-sized), ``val_interval`` (1), ``pretrained`` (true),
``seed`` (0), ``num_samples`` (16, of the comparison). Anything that stops a run (fewer than two rated patients, a
bad parameter, a volume without spacing, a rater's mask off its image's grid, a failed training) ends the task with
status ``ERROR`` and one line saying why, and leaves the model in use untouched; with ``run_sync=true`` the POST
answers 400 / 500 with that line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from fastapi import HTTPException
from monailabel.datastore.dicom import DICOMWebDatastore
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from monai_probunet.data.disk_format import DatasetError
from monai_probunet.data.raters import export_rater_dataset
from monai_probunet.io_utils import atomic_write_json
from monai_probunet.model_loading import model_grid

from .model_swap import compare_models, swap_in

logger = logging.getLogger(__name__)

__all__ = ["ProbUNetTrain", "TrainRequestError"]

FINETUNE_YAML = Path(__file__).with_name("finetune.yaml")
#: the repository root (apps/monailabel/lib/trainers/probunet_train.py -> 4 levels up): the bundle command runs there
REPO_ROOT = Path(__file__).resolve().parents[4]
_EPOCH = re.compile(r"Epoch\[(\d+)\] Metrics -- (.*)")
_METRIC = re.compile(r"(\w+): ([-+0-9.eE]+|nan)")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class TrainRequestError(Exception):
    """A train request that cannot run (bad parameter, too few rated images, no raters' labels); ``status`` is
    the HTTP status of a synchronous request."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.msg, self.status = msg, status


def _int_param(request: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = request.get(key, default)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TrainRequestError(f"{key} {value!r}: expected an integer in [{low}, {high}].")
    return value


def _bool_param(request: dict[str, Any], key: str, default: bool) -> bool:
    value = request.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TrainRequestError(f"{key} {value!r}: expected true or false.")


def _check_one_size(dataset: Path, content: dict[str, Any]) -> None:
    """The bundle's training batches whole images: every exported image must have one size."""
    import nibabel as nib

    shapes: dict[tuple[int, ...], str] = {}
    for split in ("training", "validation", "test"):
        for entry in content[split]:
            shapes.setdefault(tuple(int(n) for n in nib.load(str(dataset / entry["image"])).shape), entry["case_id"])
    if len(shapes) > 1:
        examples = ", ".join(f"{cid} {list(shape)}" for shape, cid in list(shapes.items())[:3])
        raise TrainRequestError(f"the rated images differ in size ({examples}): the training batches whole 2-D images, "
                                "so rate 2-D candidate crops of one size (or whole CT volumes, which are cut into "
                                "the model's crops).")


def _in_background_process() -> bool:
    """MONAI Label runs ``POST /train/`` in ``python -m monailabel.interfaces.utils.app -m train`` (its status is
    the exit code); ``run_sync=true`` runs it inside the server."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "monailabel.interfaces.utils.app"


class ProbUNetTrain(TrainTask):
    """Train the ProbUNet on the raters' outlines and swap the new model in if it is better (module docstring).

    Args:
        model_path: the model file the infer task uses (``model.pt``, replaced only by a better model).
        config_file: bundle config file(s) of the network (the infer task's ``network_config``; the first one is
            the bundle's ``train.yaml`` or a file composing it).
        work_dir: where runs, exports and ``train_stats.json`` are written (``<app>/model/probunet_train``).
        max_epochs, val_interval, num_samples, seed: request defaults.
        num_graders: grader masks per exported case (default: the most raters any image has).
        python: interpreter of the bundle command (default: this one).
    """

    def __init__(
        self,
        model_path: str,
        config_file: Sequence[str],
        work_dir: str,
        max_epochs: int = 5,
        val_interval: int = 1,
        num_samples: int = 16,
        seed: int = 0,
        num_graders: int | None = None,
        python: str | None = None,
    ) -> None:
        super().__init__(
            "Probabilistic U-Net: export every rater's outline, run the bundle's training on it, and use the new "
            "model only if its validation GED beats the current model's"
        )
        self.model_path = Path(model_path)
        self.config_file = [str(c) for c in config_file]
        self.work_dir = Path(work_dir)
        self.defaults = {"max_epochs": max_epochs, "val_interval": val_interval, "pretrained": True,
                         "seed": seed, "num_samples": num_samples}
        self.num_graders = num_graders
        self.python = python or sys.executable

    # ------------------------------------------------------------------------------------------ MONAI Label API

    def config(self) -> dict[str, Any]:
        return dict(self.defaults)

    @property
    def stats_path(self) -> Path:
        return self.work_dir / "train_stats.json"

    def stats(self) -> dict[str, Any]:
        """The last run's state and outcome (``train_stats`` of ``/info/``); ``{}`` before the first run."""
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        previous = self.stats()
        self._run_stats: dict[str, Any] = {}
        try:
            return self._run(request, datastore)
        except TrainRequestError as e:
            last = previous.get("result") or previous.get("last_result")
            if self._run_stats.get("run_dir"):
                try:
                    os.rmdir(self._run_stats["run_dir"])  # a run that wrote nothing leaves no folder
                except OSError:
                    pass  # not empty: the export / training log stay for a look
            self._write_stats({**self._run_stats, "state": "FAILED", "error": e.msg, "last_result": last})
            logger.error(f"train probunet FAILED: {e.msg}")
            print(f"train probunet FAILED: {e.msg}", flush=True)
            if _in_background_process():
                raise SystemExit(2) from None  # the task's status: ERROR, its last detail line: the message
            raise HTTPException(status_code=e.status, detail=e.msg) from None

    # ------------------------------------------------------------------------------------------ steps

    def _write_stats(self, stats: dict[str, Any]) -> None:
        atomic_write_json(self.stats_path, {**stats, "updated": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _params(self, request: dict[str, Any]) -> dict[str, Any]:
        d = self.defaults
        params = {
            "max_epochs": _int_param(request, "max_epochs", d["max_epochs"], 1, 100000),
            "val_interval": _int_param(request, "val_interval", d["val_interval"], 1, 100000),
            "seed": _int_param(request, "seed", d["seed"], 0, 2**31 - 1),
            "num_samples": _int_param(request, "num_samples", d["num_samples"], 2, 256),
            "pretrained": _bool_param(request, "pretrained", d["pretrained"]),
        }
        if params["val_interval"] > params["max_epochs"]:
            raise TrainRequestError(
                f"val_interval {params['val_interval']} > max_epochs {params['max_epochs']}: no validation would "
                "run, so no model would be chosen; give val_interval <= max_epochs.")
        return params

    def _studies(self, datastore: Datastore) -> str:
        """The local datastore folder to export: the studies folder, or a DICOMweb datastore's cache once every
        rater's latest SEG is read into it."""
        if isinstance(datastore, DICOMWebDatastore):
            if not hasattr(datastore, "sync_rater_labels"):
                raise TrainRequestError(f"this server's datastore is {type(datastore).__name__}, which keeps no "
                                        "raters' labels: start the app on the DICOMweb server as it is set up "
                                        "(apps/monailabel/README.md).")
            try:
                return datastore.sync_rater_labels()
            except HTTPException as e:  # the server did not answer, or a SEG that is no lesion outline
                raise TrainRequestError(f"reading the raters' SEGs from the DICOMweb server: {e.detail}",
                                        status=e.status_code) from None
        studies = getattr(datastore, "_datastore_path", None)
        if not studies or not os.path.isfile(os.path.join(studies, "datastore_v2.json")):
            raise TrainRequestError("training needs a local studies folder (the raters' labels are kept there); "
                                    f"this server's datastore is {type(datastore).__name__}.")
        return studies

    def _run(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        params = self._params(request)
        studies = self._studies(datastore)
        try:
            spacing, roi_size = model_grid(self.model_path, self.config_file)
        except (ValueError, FileNotFoundError) as e:
            raise TrainRequestError(f"the model's grid (the crops of CT volumes): {e}", status=500) from None
        run_dir = self.work_dir / time.strftime("run_%Y%m%d-%H%M%S")
        k = 1
        while run_dir.exists():
            run_dir = self.work_dir / f"{time.strftime('run_%Y%m%d-%H%M%S')}_{k}"
            k += 1
        run_dir.mkdir(parents=True)
        stats: dict[str, Any] = {"state": "EXPORTING", "run_dir": str(run_dir), "params": params}
        self._run_stats = stats  # what a failure reports besides its message
        self._write_stats(stats)

        try:
            datalist = export_rater_dataset(studies, run_dir / "dataset", num_graders=self.num_graders,
                                            seed=params["seed"], spacing=spacing, roi_size=roi_size)
        except DatasetError as e:
            raise TrainRequestError(f"export of the raters' labels: {e}") from None
        content = json.loads(datalist.read_text())
        _check_one_size(datalist.parent, content)
        counts = {s: len(content[s]) for s in ("training", "validation", "test")}
        stats.update(state="TRAINING", export=str(datalist.parent), cases=counts, num_graders=content["num_graders"],
                     epoch=0, max_epochs=params["max_epochs"])
        print(f"train probunet: exported {counts['training']} training, {counts['validation']} validation, "
              f"{counts['test']} test images with {content['num_graders']} graders each to {datalist.parent} "
              f"(CT volumes: crops of {roi_size[0]} x {roi_size[1]} px at {spacing[0]:g} x {spacing[1]:g} mm)",
              flush=True)
        self._write_stats(stats)

        pretrained = params["pretrained"] and self.model_path.is_file()
        new_model = self._train(run_dir, datalist.parent, params, pretrained, stats)

        stats.update(state="COMPARING")
        self._write_stats(stats)
        current = self.model_path if self.model_path.is_file() else None
        try:
            comparison = compare_models(current, new_model, self.config_file, datalist.parent,
                                        num_samples=params["num_samples"], seed=params["seed"],
                                        device="cuda" if torch.cuda.is_available() else "cpu")
        except (ValueError, FileNotFoundError, RuntimeError) as e:
            raise TrainRequestError(f"comparison of the new and the current model failed: {e}", status=500) from None
        better = comparison["current_ged"] is None or comparison["new_ged"] < comparison["current_ged"]
        backup = swap_in(new_model, self.model_path) if better else None
        result = {
            "swapped": better,
            "model_path": str(self.model_path),
            "backup": str(backup) if backup else None,
            "new_model": str(new_model),
            "pretrained_from": str(self.model_path) if pretrained else None,
            **comparison,
        }
        stats.update(state="DONE", result=result)
        self._write_stats(stats)
        vs = "no current model" if current is None else f"current {comparison['current_ged']:.4f}"
        where = f"on {comparison['num_images']} validation images, S={comparison['num_samples']}"
        if better:
            kept = f"; previous model kept as {backup}" if backup else ""
            msg = (f"train probunet: new model in use: validation GED {comparison['new_ged']:.4f} < {vs} ({where}); "
                   f"{self.model_path} replaced{kept}")
        else:
            msg = (f"train probunet: new model NOT used: validation GED {comparison['new_ged']:.4f} >= {vs} "
                   f"({where}); {self.model_path} unchanged; the new model stays in {new_model}")
        logger.info(msg)
        print(msg, flush=True)
        return result

    def _train(self, run_dir: Path, dataset: Path, params: dict[str, Any], pretrained: bool,
               stats: dict[str, Any]) -> Path:
        """Run the bundle's training; returns the ``model.pt`` it wrote (the weights after the last epoch)."""
        configs = self.config_file + ([str(FINETUNE_YAML)] if pretrained else [])
        ckpt_dir = run_dir / "models"
        cmd = [self.python, "-m", "monai.bundle", "run", "training", "--config_file", json.dumps(configs),
               "--dataset_name", "folder", "--dataset_dir", str(dataset), "--ckpt_dir", str(ckpt_dir),
               "--output_dir", str(run_dir / "eval"), "--max_epochs", str(params["max_epochs"]),
               "--val_interval", str(params["val_interval"]), "--seed", str(params["seed"])]
        if pretrained:
            cmd += ["--pretrained_path", str(self.model_path)]
        logger.info(f"train probunet: {' '.join(cmd)}")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        tail: list[str] = []
        with open(run_dir / "training.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT,
                                    env=env)
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                line = line.rstrip()
                if not line:
                    continue
                print(line, flush=True)  # MONAI Label's task runner keeps the last lines as the status details
                tail = (tail + [line])[-5:]
                m = _EPOCH.search(line)
                if m:
                    metrics = {k: float(v) for k, v in _METRIC.findall(m.group(2))}
                    stats["epoch"] = max(int(m.group(1)), stats.get("epoch", 0))
                    if "val_ged" in metrics:
                        stats.setdefault("val_ged", []).append([int(m.group(1)), metrics["val_ged"]])
                    if "train_loss" in metrics:
                        stats["train_loss"] = metrics["train_loss"]
                    self._write_stats(stats)
            code = proc.wait()
        if code != 0:
            last = next((t for t in reversed(tail) if "error" in t.lower()), tail[-1] if tail else "no output")
            raise TrainRequestError(f"the bundle's training exited with status {code} (log: {run_dir / 'training.log'}"
                                    f"): {last}", status=400 if code == 2 else 500)
        model = ckpt_dir / "model.pt"
        if not model.is_file():
            raise TrainRequestError(f"the bundle's training wrote no {model} (no validation ran).", status=500)
        return model
