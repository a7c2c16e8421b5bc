"""A training run's model folder: what it records there and what it checks before writing into it.

A run writes ``model.pt`` with ``model.json`` beside it (:func:`trained_settings`, written by
:class:`~monai_probunet.handlers.FinalModel`): the grid the model was trained on (for your own data the training
images' pixel spacing and size), which inference then resamples and crops to
(:func:`~monai_probunet.model_loading.load_model`), and the data it was trained on. Before any work the bundle checks
(one line each, exit status 2):

- :func:`check_training_folder`: ``--ckpt_dir`` holds no model of other data (two datasets in folders of one name
  would share ``bundle/models/<name>``) and no file of the names a run writes that a run did not write;
- :func:`check_evaluated_model`: ``run evaluating`` scores a model on the data it was trained on.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .bundle_utils import as_bool
from .io_utils import InputFileError, load_network_weights
from .model_loading import model_record, read_model_settings

logger = logging.getLogger(__name__)

__all__ = [
    "RUN_FILES",
    "check_evaluated_model",
    "check_training_folder",
    "data_geometry",
    "dataset_identity",
    "trained_settings",
]

#: the files a training run writes into its ``ckpt_dir`` (weights, checkpoints)
RUN_FILES = ("model.pt", "model_best_validation.pt", "checkpoint_final.pt", "checkpoint_last.pt")


def dataset_identity(dataset_name: str, dataset_dir: str | os.PathLike) -> str:
    """The data a model is trained on: a built-in dataset's name, or your own data's folder (absolute)."""
    if str(dataset_name) != "folder":
        return str(dataset_name)
    return os.path.abspath(os.path.expanduser(str(dataset_dir)))


def trained_settings(
    hu_window: Sequence[float],
    infer_spacing: Sequence[float],
    infer_roi_size: Sequence[int],
    dataset_name: str,
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    crop: Sequence[Any] = (),
) -> dict[str, Any]:
    """What ``model.json`` records of a run: the HU window, the grid inference is to resample and crop to, the data.

    For your own data (``dataset_name`` ``folder``) the grid is the training images' own (:func:`data_geometry`):
    their pixel spacing, and without a random crop (``train#crop``) their size; where ``infer_spacing`` or
    ``infer_roi_size`` say otherwise a warning says so, and the images' grid is recorded, so that the model is never
    run at another scale or field than it learnt. A built-in dataset's grid is its config's.
    """
    spacing, roi = [float(v) for v in infer_spacing], [int(v) for v in infer_roi_size]
    if str(dataset_name) == "folder" and datalist is not None:
        path, shape, zooms = data_geometry(datalist)
        data_roi = roi if crop else list(shape)
        if not np.allclose(zooms, spacing, rtol=1e-3) or data_roi != roi:
            logger.warning(
                "%s: the training images are %s px at %s mm; inference will crop %s px at %s mm, their grid "
                "(infer_roi_size %s, infer_spacing %s set otherwise; model.json records what the model learns)",
                path, " x ".join(map(str, shape)), " x ".join(f"{z:g}" for z in zooms),
                " x ".join(map(str, data_roi)), " x ".join(f"{z:g}" for z in zooms), roi, spacing,
            )
        spacing, roi = list(zooms), data_roi
    return {
        "hu_window": [float(v) for v in hu_window],
        "infer_spacing": spacing,
        "infer_roi_size": roi,
        "dataset": dataset_identity(dataset_name, dataset_dir),
    }


def data_geometry(datalist: str | os.PathLike) -> tuple[Path, tuple[int, ...], tuple[float, ...]]:
    """The first training image of a datalist (all its images share one size and spacing: checked with the cases):
    its path, in-plane shape and pixel spacing (mm) from its header."""
    import nibabel as nib

    from .data import load_datalist

    path = Path(load_datalist(datalist, "training")[0]["image"])
    img = nib.load(str(path))  # a 2-D image: H x W (an RGB one H x W x 3)
    return path, tuple(int(n) for n in img.shape[:2]), tuple(float(z) for z in img.header.get_zooms()[:2])


def _fits(path: Path, network: Any) -> bool:
    """Whether ``path`` is this network's weights (a state dict, or a checkpoint holding one under ``model``)."""
    try:
        load_network_weights(copy.deepcopy(network), path)
    except (InputFileError, OSError, ValueError):
        return False
    return True


def check_training_folder(
    ckpt_dir: str | os.PathLike, network: Any, dataset_name: str, dataset_dir: str | os.PathLike, resume: Any = False
) -> None:
    """Refuse a ``--ckpt_dir`` that holds a model of other data, or a file of the names a run writes
    (:data:`RUN_FILES`) that no training run wrote.

    A folder with ``model.json`` was written by a run: its data must be this run's (the folder a dataset's name
    selects, ``bundle/models/<name>``, is shared by every dataset folder of that name). Without it (a folder of
    yours, or an earlier version's run), each such file must be this network's weights; with ``resume``
    ``checkpoint_last.pt`` is the run to continue, which the resume itself checks against the command.

    Raises:
        InputFileError: one line naming the folder, what it holds and what to do.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return
    here = dataset_identity(dataset_name, dataset_dir)
    record = model_record(folder)
    if record is not None:
        trained_on = record.get("dataset")
        if trained_on is not None and trained_on != here:
            raise InputFileError(
                f"--ckpt_dir {folder} holds the model trained on {trained_on}, and this run trains on {here}: "
                f"give this data a folder of its own (--ckpt_dir), or move {folder} away to replace it."
            )
        return
    names = [n for n in RUN_FILES if not (as_bool(resume, "resume") and n == "checkpoint_last.pt")]
    foreign = [name for name in names if (folder / name).is_file() and not _fits(folder / name, network)]
    if foreign:
        raise InputFileError(
            f"--ckpt_dir {folder} holds {', '.join(foreign)}, which this run would replace and which are not this "
            "network's weights (no training run of this configuration wrote them): give an empty or new --ckpt_dir."
        )


def check_evaluated_model(ckpt_path: str | os.PathLike, dataset_name: str, dataset_dir: str | os.PathLike) -> None:
    """Refuse to score a model on other data than it was trained on (its ``model.json`` says which): a second dataset
    in a folder of the same name would otherwise be scored with the first one's model.

    Raises:
        InputFileError: one line naming the model, both datasets and the option to use.
    """
    record = read_model_settings(ckpt_path)
    trained_on = None if record is None else record.get("dataset")
    here = dataset_identity(dataset_name, dataset_dir)
    if trained_on is not None and trained_on != here:
        raise InputFileError(
            f"{ckpt_path} was trained on {trained_on}, not on {here}: give the model of this data with --ckpt_dir "
            "(where its training wrote it)."
        )
