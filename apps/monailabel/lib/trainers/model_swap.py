"""Compare two ProbUNet checkpoints on a dataset's validation split by GED and swap the better one in atomically.

:func:`compare_models` evaluates both checkpoints with :func:`monai_probunet.evaluation.evaluate` on the same images,
with the same bundle preprocessing (``validate#preprocessing`` of the network's config files), the same number of
samples and the same sampling seed: squared GED (Eq. 6, V-statistic, ``d = 1 - IoU`` of the lesion, empty-empty = 0)
against the graders, mean over the validation images. :func:`swap_in` keeps the replaced model as a backup file
beside it and replaces the model file with one ``os.replace``, so a reader sees the old or the new file, never a
part of one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_probunet.io_utils import atomic_write
from monai_probunet.model_loading import MODEL_SETTINGS_NAME

__all__ = ["backup_path", "compare_models", "swap_in"]


def _validation_setup(config_files: Sequence[str], dataset_dir: str | Path) -> tuple[Any, list[dict], int]:
    """(``validate#preprocessing``, the validation items, ``num_classes``) of the bundle config on ``dataset_dir``."""
    from monai.bundle import ConfigParser

    from monai_probunet.data import load_datalist, prepare_dataset

    parser = ConfigParser()
    parser.read_config([str(c) for c in config_files])
    datalist = prepare_dataset("folder", str(dataset_dir))  # validates every case of the export
    parser["datalist"] = str(datalist)
    transform = parser.get_parsed_content("validate#preprocessing")
    return transform, load_datalist(datalist, "validation"), int(parser.get_parsed_content("num_classes"))


def compare_models(
    current: str | Path | None,
    new: str | Path,
    config_files: Sequence[str],
    dataset_dir: str | Path,
    num_samples: int = 16,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Mean validation GED of ``new`` and of ``current`` (``None``: no current model) on the same images.

    Args:
        current: the model in use (``model.pt``, state dict) or ``None``.
        new: the freshly trained ``model.pt``.
        config_files: bundle config files defining ``network_def`` and ``validate#preprocessing``.
        dataset_dir: a dataset in the project's on-disk format with a non-empty ``validation`` split.
        num_samples: S hypotheses per image.
        seed: the sampling seed of both models.
        device: where sampling runs.

    Returns:
        ``{"new_ged", "current_ged" (None without a current model), "num_images", "case_ids", "num_samples", "seed",
        "estimator"}``.
    """
    from monai_probunet.evaluation import evaluate
    from monai_probunet.model_loading import load_model

    transform, items, num_classes = _validation_setup(config_files, dataset_dir)
    models = {"new": load_model(str(new), list(config_files), device=device)[0]}
    if current is not None:
        models["current"] = load_model(str(current), list(config_files), device=device)[0]
    results = evaluate(models, items, transform, sample_counts=(num_samples,), seed=seed, device=device,
                       num_classes=num_classes, oracle=False, split="validation")
    ged = {name: float(np.mean(r.values["ged"][:, 0])) for name, r in results.items()}
    return {
        "new_ged": round(ged["new"], 6),
        "current_ged": round(ged["current"], 6) if "current" in ged else None,
        "num_images": results["new"].num_images,
        "case_ids": list(results["new"].case_ids),
        "num_samples": int(num_samples),
        "seed": int(seed),
        "estimator": "squared GED (Eq. 6, V-statistic, d = 1 - IoU of the lesion, empty-empty = 0) vs the graders, "
                     "mean over the validation split",
    }


def backup_path(model_path: str | Path, when: float | None = None) -> Path:
    """``<folder>/<stem>_before_<YYYYmmdd-HHMMSS>.pt``: a name no earlier backup has (a counter is added if so)."""
    model_path = Path(model_path)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if when is None else when))
    path = model_path.with_name(f"{model_path.stem}_before_{stamp}{model_path.suffix}")
    k = 1
    while path.exists():
        path = model_path.with_name(f"{model_path.stem}_before_{stamp}_{k}{model_path.suffix}")
        k += 1
    return path


def swap_in(new: str | Path, model_path: str | Path) -> Path | None:
    """Make ``new`` the model at ``model_path``; the replaced file is kept as :func:`backup_path`.

    Both the backup and the new model are first copied into temporary files of the model's folder and then moved
    into place with ``os.replace``; the model file itself is replaced by one ``os.replace`` (a fresh file: a new
    modification time, which the infer task's model cache notices). Its ``model.json`` (the grid it was trained on)
    then comes beside it.

    Returns:
        the backup's path, or ``None`` when there was no model file to keep.
    """
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if model_path.is_file():
        backup = backup_path(model_path)
        atomic_write(backup, lambda p: shutil.copyfile(model_path, p))
    atomic_write(model_path, lambda p: shutil.copyfile(new, p))
    settings = Path(new).with_name(MODEL_SETTINGS_NAME)  # the grid it was trained on, for the infer task
    if settings.is_file():
        atomic_write(model_path.with_name(MODEL_SETTINGS_NAME), lambda p: shutil.copyfile(settings, p))
    return backup
