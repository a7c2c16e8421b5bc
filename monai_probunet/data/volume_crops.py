"""Rated CT volumes as 2-D training crops on the model's grid: one crop per lesion and axial slice.

Raters outline a lesion in 3-D on a whole CT volume; the model is 2-D and sees its field (``roi_size`` pixels at
``spacing`` mm) around a click on one axial slice. A lesion is a connected part (26-connectivity,
``scipy.ndimage.label``) of the union of the raters' outlines of the volume. For every axial slice it spans (along
the volume's axis nearest to the patient's superior axis) one crop is cut around the lesion's centre on that slice
(the centroid of its voxels there), as the inference path cuts the field around a click
(:class:`~monai_probunet.inference_preprocess.AxialSliced` and
:class:`~monai_probunet.inference_preprocess.ModelGridd`: the slice turned to the model's axis directions,
resampled in-plane, the field cut around the centre): the image bilinearly in HU (the border continued beyond the
image), each rater's mask by nearest neighbour (nothing drawn beyond the image). Each rater's mask on that slice is
a grader; a rater whose outline misses the slice drew nothing there: an empty grader. A slice where no rater's
outline is left on the model's grid (a lesion's tip thinner than its pixel) gives no crop: that is not a reading
of "no lesion".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from ..ct_io import _affine4, _points, _slice_axis, load_ct
from ..inference_preprocess import AxialSliced, ModelGridd
from .disk_format import DatasetError
from .validation import _grid_difference

__all__ = ["SliceCrop", "is_volume", "lesion_slices", "volume_crops"]


@dataclass
class SliceCrop:
    """One training crop of a rated volume.

    Attributes:
        lesion: the lesion's number (1, 2, ... in ``scipy.ndimage.label`` order).
        slice_index: the volume's slice (index along its axial axis).
        centre_ras: the crop's centre, the lesion's centroid on the slice, in RAS mm (3,).
        image: ``H x W`` float32 HU on the model's grid (``H x W = roi_size``).
        masks: ``R x H x W`` uint8 0/1, one per rater in the order given.
        affine: ``4 x 4`` voxel -> RAS affine of the crop (its in-plane voxel sizes are ``spacing``).
    """

    lesion: int
    slice_index: int
    centre_ras: np.ndarray
    image: np.ndarray
    masks: np.ndarray
    affine: np.ndarray


def is_volume(shape: Sequence[int]) -> bool:
    """Whether an image of spatial ``shape`` is a volume (3 axes of more than one voxel), not a 2-D slice."""
    return len(shape) == 3 and min(int(n) for n in shape) > 1


def lesion_slices(union: np.ndarray, slice_axis: int) -> list[tuple[int, int, np.ndarray]]:
    """The lesions of a volume's outline union and the slices each spans.

    Args:
        union: ``I x J x K`` 0/1 (any rater's outline).
        slice_axis: the axial axis of the volume.

    Returns:
        ``[(lesion, slice index, centroid voxel (3,) float64), ...]`` in lesion then slice order; the centroid is
        that of the lesion's voxels on the slice (its ``slice_axis`` coordinate the slice index).
    """
    labels, _ = ndimage.label(union > 0, structure=ndimage.generate_binary_structure(3, 3))
    out = []
    for lesion, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        for k in range(box[slice_axis].start, box[slice_axis].stop):
            index = [slice(None)] * 3
            index[slice_axis] = k
            on_slice = labels[tuple(index)] == lesion
            if not on_slice.any():
                continue
            centre = np.insert(np.asarray(ndimage.center_of_mass(on_slice), np.float64), slice_axis, float(k))
            out.append((lesion, k, centre))
    return out


def _load_masks(image: MetaTensor, image_path: Path, label_paths: Sequence[str | Path]) -> list[np.ndarray]:
    """The raters' masks of ``image`` as ``I x J x K`` uint8, each checked to be 0/1 on the image's voxel grid."""
    ref = nib.load(str(image_path))
    masks = []
    for path in label_paths:
        try:
            label = nib.load(str(path))
            data = np.asarray(label.dataobj)
        except Exception as e:  # noqa: BLE001 -- reader errors name the file
            raise DatasetError(f"{path}: not a readable NIfTI label ({type(e).__name__}: {e}).") from None
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.shape != tuple(image.shape[1:]):
            raise DatasetError(f"{path}: shape {list(data.shape)}, expected the image's {list(image.shape[1:])} "
                               f"({image_path}): the rater's mask is not on the image's voxel grid.")
        off_grid = _grid_difference(ref, label, 3)
        if off_grid:
            raise DatasetError(f"{path}: not on the voxel grid of its image {image_path} ({off_grid}).")
        if not set(np.unique(data).tolist()) <= {0, 1}:
            raise DatasetError(f"{path}: values other than 0 and 1; expected one lesion outline (0/1).")
        masks.append(data.astype(np.uint8))
    return masks


def volume_crops(
    image_path: str | Path,
    label_paths: Sequence[str | Path],
    spacing: Sequence[float],
    roi_size: Sequence[int],
) -> list[SliceCrop]:
    """Cut a rated CT volume into the model's 2-D crops: one per lesion and axial slice it spans (module docstring).

    Args:
        image_path: the CT volume (NIfTI; read with :func:`~monai_probunet.ct_io.load_ct`, which refuses a volume
            without spacing or orientation, or not plausibly in HU).
        label_paths: the raters' masks (NIfTI, 0/1, on the image's voxel grid), one per rater.
        spacing: the model's in-plane pixel spacing in mm (2 values).
        roi_size: the model's crop size in pixels (2 values).

    Returns:
        the crops in lesion then slice order (none if no rater outlined anything; none for a slice where no outline
        is left on the model's grid).

    Raises:
        DatasetError: one line naming the file and what was expected.
    """
    image_path = Path(image_path)
    try:
        image, source = load_ct(image_path)
    except (ValueError, FileNotFoundError) as e:
        raise DatasetError(str(e)) from None
    if not is_volume(image.shape[1:]):
        raise DatasetError(f"{image_path}: shape {list(image.shape[1:])}, expected a CT volume (3 axes).")
    masks = _load_masks(image, image_path, label_paths)
    affine = _affine4(image)
    slice_axis = _slice_axis(affine, 3)
    union = np.any(np.stack(masks), axis=0) if masks else np.zeros(image.shape[1:], bool)
    keys = [f"rater{r}" for r in range(len(masks))]
    image_grid = ModelGridd("image", spacing=spacing, roi_size=roi_size, padding_mode="edge")
    mask_grid = ModelGridd(keys, spacing=spacing, roi_size=roi_size, padding_mode="constant", mode="nearest")
    case = {"image": image, **{k: MetaTensor(torch.as_tensor(m[None]), affine=image.affine,
                                             meta={"filename_or_obj": source}) for k, m in zip(keys, masks)}}
    crops = []
    for lesion, k, centre in lesion_slices(union, slice_axis):
        d = {**case, "source": source, "center_voxel": centre, "input_affine": affine,
             "center_world_ras": _points(affine, centre[None], invert=False)[0]}
        try:
            d = mask_grid(image_grid(AxialSliced(["image", *keys])(d)))
        except ValueError as e:  # a slice smaller than the model's field
            raise DatasetError(f"{str(e).split('; give ')[0]}: the model's crops cannot be cut from this volume's "
                               "slices.") from None
        crop = d["image"]
        crop_masks = np.stack([np.asarray(d[key].as_tensor()[0, ..., 0]) > 0.5 for key in keys]).astype(np.uint8)
        if not crop_masks.any():  # a lesion's tip thinner than the model's pixel: no grader's outline, not "no lesion"
            continue
        crops.append(SliceCrop(
            lesion=lesion, slice_index=k, centre_ras=np.asarray(d["center_world_ras"], np.float64),
            image=np.asarray(crop.as_tensor()[0, ..., 0], np.float32),
            masks=crop_masks,
            affine=np.asarray(_affine4(crop), np.float64),
        ))
    return crops
