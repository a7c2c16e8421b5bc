"""Named datasets: built-in ones are generated and cached on first use; ``folder`` reads the user's own."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .disk_format import DATALIST_NAME, DatasetError, generated_by
from .lidc_phantom import LIDC_PHANTOM_VERSION, generate_lidc_phantom
from .scenes32 import SCENES32_VERSION, generate_scenes32
from .shapes import SHAPES_VERSION, generate_shapes
from .validation import validate_cases

__all__ = ["BUILTIN_DATASETS", "models_subfolder", "prepare_dataset"]

logger = logging.getLogger(__name__)

#: name -> (generator(root, seed=..., **kwargs) -> datalist path, generator version)
BUILTIN_DATASETS: dict[str, tuple[Callable[..., Path], int]] = {
    "shapes": (generate_shapes, SHAPES_VERSION),
    "lidc_phantom": (generate_lidc_phantom, LIDC_PHANTOM_VERSION),
}
BUILTIN_DATASETS["scenes32"] = (generate_scenes32, SCENES32_VERSION)


def _cached_params(datalist: Path) -> dict[str, Any] | None:
    try:
        return json.loads(datalist.read_text()).get("generator")
    except (OSError, json.JSONDecodeError):
        return None


def prepare_dataset(
    name: str,
    root: str | Path,
    seed: int = 0,
    intensity_window: Sequence[float] | None = None,
    num_classes: int = 2,
    ignore_index: int | None = None,
    in_channels: int = 1,
    square_images: bool = True,
    **kwargs: Any,
) -> str:
    """Return the path of a dataset's ``datalist.json``, generating a built-in dataset on first use.

    Args:
        name: a built-in dataset (see :data:`BUILTIN_DATASETS`) or ``"folder"`` for an existing dataset in the
            project's on-disk format (e.g. written by ``python -m preprocessing.lidc``); every case of a
            ``folder`` dataset is checked first (:func:`~monai_probunet.data.validation.validate_cases`).
        root: the dataset folder (cache location for built-in datasets). A built-in dataset is generated only into
            a missing or empty folder or over a dataset a generator wrote (its ``datalist.json`` has the
            ``generator`` block); a folder holding anything else is never replaced.
        seed: generation seed of a built-in dataset.
        intensity_window: ``[low, high]`` the training scales images from (``hu_window``): a ``folder`` dataset's
            images must not be flat in it (:func:`~monai_probunet.data.validation.validate_cases`).
        num_classes: the run's classes: a ``folder`` dataset's masks may hold only the class ids
            ``0 .. num_classes - 1`` and ``ignore_index``.
        ignore_index: the run's label of unannotated pixels (``None``: none).
        in_channels: the run's image channels: a ``folder`` dataset's images are ``H x W`` (1) or ``H x W x C``.
        square_images: whether a ``folder`` dataset's images must be square (the run's training transforms rotate
            by 90 degrees). These four only set the checks of a ``folder`` dataset; the defaults are
            ``train.yaml``'s binary CT task.
        kwargs: generator parameters of a built-in dataset (e.g. ``num_patients``, ``image_size``).

    Raises:
        DatasetError (a ``ValueError``): unknown ``name`` or generator parameters, ``root`` a file, a folder of
            someone else's data under a built-in name, a ``folder`` dataset with bad cases (every problem listed).
        DatasetFileNotFoundError (a ``FileNotFoundError``): ``name="folder"`` and ``root/datalist.json`` is missing.
    """
    root = Path(root).expanduser()
    datalist = root / DATALIST_NAME
    if root.exists() and not root.is_dir():
        raise DatasetError(f"--dataset_dir {root} is a file, not a folder.")
    if name == "folder":
        validate_cases(
            datalist,
            intensity_window=intensity_window,
            num_classes=num_classes,
            ignore_index=ignore_index,
            in_channels=in_channels,
            square_images=square_images,
        )
        return str(datalist)
    if name not in BUILTIN_DATASETS:
        raise DatasetError(
            f"unknown dataset name {name!r}: expected one of {sorted(BUILTIN_DATASETS)} (built-in, generated on "
            f"first use) or 'folder' (your own data in the on-disk format)."
        )
    generator, version = BUILTIN_DATASETS[name]
    if root.is_dir() and any(root.iterdir()):
        owner = generated_by(root)
        if owner is None:
            raise DatasetError(
                f"--dataset_dir {root} holds data this project did not generate (a built-in {name!r} dataset is "
                f"generated there); it is left untouched. To train on your own data in it, add --dataset_name folder."
            )
        if owner != name:
            raise DatasetError(
                f"--dataset_dir {root} holds the built-in {owner!r} dataset, not {name!r}; it is left untouched. "
                f"Give --dataset_name {owner}, or another --dataset_dir for {name!r}."
            )
    cached = _cached_params(datalist)
    if cached is not None and cached.get("name", name) == name and cached.get("version") == version:
        # through JSON, as the cached params were: a tuple argument equals the list it was recorded as
        wanted = json.loads(json.dumps({**cached.get("params", {}), "seed": seed, **kwargs}, default=str))
        if wanted == cached.get("params"):
            return str(datalist)
        logger.info("dataset %s at %s was generated with other parameters; regenerating.", name, root)
    logger.info("generating the built-in %r dataset into %s (first use) ...", name, root)
    try:
        return str(generator(root, seed=seed, **kwargs))
    except DatasetError:
        raise
    except (TypeError, ValueError) as e:  # the generators check their parameters before writing anything
        raise DatasetError(f"invalid parameters for dataset {name!r}: {kwargs} ({e})") from None


def models_subfolder(dataset_name: str, dataset_dir: str | os.PathLike) -> str:
    """The default sub-folder of ``models/`` for a training's checkpoints (``train.yaml``'s ``ckpt_task``).

    A built-in dataset's model goes to ``models/`` itself (the shipped model is trained on ``lidc_phantom``; a task
    override names its own, e.g. ``scenes32``); a model of your own data (``folder``) to ``models/<the dataset
    folder's name>``, so that training on it never replaces a shipped model and ``run evaluating`` with the same
    ``--dataset_name folder --dataset_dir`` finds it.

    Args:
        dataset_name: The bundle's ``dataset_name``.
        dataset_dir: The bundle's ``dataset_dir``.

    Returns:
        str: ``""`` or the folder's name.
    """
    if str(dataset_name) != "folder":
        return ""
    return Path(os.path.abspath(os.path.expanduser(str(dataset_dir)))).name or "folder"
