"""A local datastore that keeps every rater's outline of an image (up to the model's number of graders).

MONAI Label 0.8.5 stores a submitted label under its tag (``final`` when 3D Slicer's "Submit Label" sends none),
so the second rater's Submit replaces the first one's. :class:`RaterDatastore` stores a submitted label under the
tag ``rater_<name>`` instead, with ``"rater"`` and the time ``"ts"`` (seconds, set by MONAI Label) in the label's
info, which ``GET /datastore/?output=all`` lists. The rater's name comes from, in this order:

1. the tag itself when it is ``rater_<name>`` (``PUT /datastore/label?image=ID&tag=rater_alice``);
2. ``"rater"`` in the request's ``params`` form field (``-F 'params={"rater": "alice"}'``);
3. ``"client_id"`` in ``params``: what 3D Slicer's MONAI Label module sends with every request (its
   "Client/User-ID" setting). With authentication off MONAI Label's own user is always ``admin``, so the user name
   of the request cannot tell raters apart.

Rater names match case-insensitively: a Submit by ``Alice`` replaces the outline stored as ``alice`` (kept under
``rater_alice``) and counts once towards ``max_raters``.

A label of any other tag (e.g. ``original``) is stored as MONAI Label stores it. Refused with 4xx and one line:
no rater name (400), 3D Slicer's default Client/User-ID ``user-xyz`` (400: it is everyone's who has not set one), a
name outside ``[A-Za-z0-9._-]{1,64}`` (400), a further rater beyond ``max_raters`` on an
image (409; a rater may resubmit their own outline), a label that is not readable, not on the image's voxel grid,
or holds values other than background and the lesion (400/422). The stored file is the 0/1 lesion mask as NIfTI
on the image's grid (an empty mask is a rater who reviewed the image and found no lesion).

*Next Sample* offers a rater (the request's ``rater``, else its ``client_id``) the images with fewer than
``max_raters`` raters that they have not outlined (the app's ``next_sample`` gives the strategy
:meth:`RaterDatastore.for_rater`'s view); without a rater, or with 3D Slicer's default ``user-xyz``, the images no
rater has outlined.

An uploaded image (``PUT /datastore/image?image=ID``; 3D Slicer uploads a volume loaded with File > Add Data under its
node's name) whose id is already in the datastore never replaces the stored file, whose raters' labels would then
outline another image: the same voxels on the same grid are accepted as they are (3D Slicer uploads the volume again
on every Submit), anything else answers 409 saying how it differs and what to do.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from typing import Any
from urllib.parse import quote

import nibabel as nib
import numpy as np
from fastapi import HTTPException
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.datastore import DefaultLabelTag

from monai_probunet.data.raters import RATER_TAG_PREFIX  # the tag the export reads

logger = logging.getLogger(__name__)

__all__ = ["RATER_TAG_PREFIX", "RaterDatastore", "RaterRules", "RaterView", "check_label_shape", "image_difference",
           "lesion_mask", "lesion_segment_name", "next_sample_rater", "nrrd_layers", "offered_to", "rater_name",
           "rater_slot", "same_rater", "valid_rater_name"]

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: 3D Slicer's MONAI Label module sends this Client/User-ID until the user sets one: everyone who has not is one user
SLICER_DEFAULT_CLIENT_ID = "user-xyz"


def valid_rater_name(name: Any) -> bool:
    """Whether ``name`` is a rater's name: 1-64 letters, digits, ``.``, ``_`` or ``-`` (it names a label tag)."""
    return isinstance(name, str) and bool(_NAME.match(name))


def rater_name(tag: str | None, info: dict[str, Any]) -> str | None:
    """The rater of a submitted label (see the module docstring); ``None`` for a tag that is not a rater's.

    Raises:
        HTTPException: 400 when a rater's label has no usable name.
    """
    tag = tag or DefaultLabelTag.FINAL.value
    if tag.startswith(RATER_TAG_PREFIX):
        name = tag[len(RATER_TAG_PREFIX):]
    elif tag == DefaultLabelTag.FINAL.value:
        name = info.get("rater") or info.get("client_id")
        if not name:
            raise HTTPException(status_code=400, detail='no rater name: give params {"rater": "<name>"} (3D Slicer '
                                "sends its Client/User-ID as client_id) or the tag rater_<name>.")
        if not info.get("rater") and name == SLICER_DEFAULT_CLIENT_ID:
            raise HTTPException(status_code=400, detail=f"Client/User-ID {name!r} is 3D Slicer's default, the same "
                                "for everyone who has not set one, so one rater's outline would replace another's: "
                                "set your name under Edit > Application Settings > MONAI Label > Client/User-ID, "
                                "then Submit again.")
    else:
        return None
    if not valid_rater_name(name):
        raise HTTPException(status_code=400, detail=f"rater name {name!r}: expected 1-64 letters, digits, '.', '_' "
                            "or '-'.")
    return name


def next_sample_rater(request: dict[str, Any]) -> str | None:
    """The rater a *Next Sample* request is for: its ``rater``, else its ``client_id`` (3D Slicer sends its
    Client/User-ID with every request) unless that is 3D Slicer's default ``user-xyz``; ``None`` without one."""
    name = request.get("rater")
    if not isinstance(name, str) or not name.strip():
        name = request.get("client_id")
        if name == SLICER_DEFAULT_CLIENT_ID:
            return None
    return name.strip() if isinstance(name, str) and name.strip() else None


def same_rater(a: str, b: str) -> bool:
    """Whether two rater names are one rater's: names match case-insensitively (``Alice`` is ``alice``)."""
    return a.casefold() == b.casefold()


def rater_slot(image_id: str, name: str, stored: Any, max_raters: int) -> str:
    """The name under which ``name``'s label of ``image_id`` is kept: the stored spelling of the same rater (names
    match case-insensitively), else ``name``.

    Args:
        image_id: the image (named in the refusal).
        name: the submitting rater.
        stored: the names of the raters already stored for the image.
        max_raters: the most raters an image keeps.

    Raises:
        HTTPException: 409 when the image has ``max_raters`` other raters.
    """
    stored = sorted(stored)
    known = next((r for r in stored if same_rater(r, name)), None)
    if known is not None and known != name:
        logger.info(f"rater {name!r} of {image_id} is the stored {known!r} (names match case-insensitively)")
        name = known
    others = sorted({r.casefold(): r for r in stored if not same_rater(r, name)}.values())
    if len(others) >= max_raters:
        raise HTTPException(status_code=409, detail=f"image {image_id!r} already has {len(others)} raters "
                            f"({', '.join(others)}), the model's number of graders; {name!r} not stored.")
    return name


def offered_to(rater: str | None, raters: Any, max_raters: int) -> bool:
    """Whether *Next Sample* offers ``rater`` an image outlined by ``raters``: fewer than ``max_raters`` raters,
    none of them ``rater`` (names match case-insensitively); for ``None``, an image no rater has outlined."""
    names = {r.casefold() for r in raters}
    if rater is None:
        return not names
    return len(names) < max_raters and rater.casefold() not in names


def _grid(image: Any) -> tuple[tuple[int, ...], np.ndarray]:
    """A SimpleITK image's size (axes of length 1 at the end dropped) and its 3 x 4 voxel -> LPS matrix (a 2-D
    image padded with a unit third axis)."""
    dim = image.GetDimension()
    size = list(image.GetSize())
    while len(size) > 2 and size[-1] == 1:
        size.pop()
    matrix = np.eye(3, 4)
    direction = np.asarray(image.GetDirection(), float).reshape(dim, dim)
    matrix[:dim, :dim] = direction * np.asarray(image.GetSpacing(), float)
    matrix[:dim, 3] = image.GetOrigin()
    return tuple(size), matrix


def image_difference(stored_file: str, upload_file: str) -> str | None:
    """How an uploaded image differs from the stored one (size, geometry, voxel values), ``None`` when it holds the
    same voxels on the same grid (a byte-identical file, or e.g. 3D Slicer's re-saving of the same volume).

    A 2-D image and the same image as a volume of one slice are the same; a different voxel type with the same
    values is the same image. Geometry is compared to 1e-3 mm (what NIfTI's single precision keeps).
    """
    import filecmp

    import SimpleITK as sitk

    if filecmp.cmp(stored_file, upload_file, shallow=False):
        return None
    images = []
    for what, path in (("the upload", upload_file), ("the stored file", stored_file)):
        try:
            images.append(sitk.ReadImage(path))
        except RuntimeError as e:
            return f"{what} is not a readable image ({str(e).strip().splitlines()[-1][:200]})"
    upload, stored = images
    (up_size, up_grid), (st_size, st_grid) = _grid(upload), _grid(stored)
    shown = " x ".join
    if up_size != st_size:
        return f"size {shown(map(str, up_size))} voxels, the stored image's {shown(map(str, st_size))}"
    comps = upload.GetNumberOfComponentsPerPixel(), stored.GetNumberOfComponentsPerPixel()
    if comps[0] != comps[1]:
        return f"{comps[0]} components per voxel, the stored image's {comps[1]}"
    dim = min(upload.GetDimension(), stored.GetDimension())  # a 2-D image has no slice position to compare
    offset = np.abs(up_grid[:dim] - st_grid[:dim]).max()
    if offset > 1e-3:
        return (f"geometry (origin, spacing or direction) differs by up to {offset:.4g} mm, the voxels' positions "
                "in the patient")
    a = sitk.GetArrayViewFromImage(upload).reshape(-1)
    b = sitk.GetArrayViewFromImage(stored).reshape(-1)
    unequal = a != b
    if a.dtype.kind == "f" and b.dtype.kind == "f":
        unequal &= ~(np.isnan(a) & np.isnan(b))
    differ = np.flatnonzero(unequal)
    if differ.size:
        largest = float(np.nanmax(np.abs(a[differ].astype(np.float64) - b[differ].astype(np.float64)), initial=0))
        return f"{differ.size:,} of {a.size:,} voxel values differ (by up to {largest:.6g})"
    return None


def nrrd_layers(path: str) -> int | None:
    """The number of layers of a layered NRRD segmentation (3D Slicer writes overlapping segments as a 4-D NRRD, the
    first axis a list of layers), read from its header (pynrrd, a MONAI Label dependency); ``None`` for any other
    file."""
    if not path.endswith(".nrrd"):
        return None
    import nrrd

    try:
        header = nrrd.read_header(path)
    except (OSError, nrrd.NRRDError):
        return None  # the label reader names an unreadable file
    sizes, kinds = list(header.get("sizes", [])), list(header.get("kinds", []))
    return int(sizes[0]) if len(sizes) == 4 and kinds[:1] == ["list"] else None


def check_label_shape(label_shape: tuple[int, ...], image_shape: tuple[int, ...]) -> None:
    """Refuse (400) a label whose shape is not the image's (axes of length 1 aside).

    A layered 3D Slicer segmentation (a ``.seg.nrrd`` of overlapping segments: one more axis, one layer per segment)
    is told apart: one lesion segment is what a rater submits.
    """
    label_shape, image_shape = tuple(int(s) for s in label_shape), tuple(int(s) for s in image_shape)
    if tuple(s for s in label_shape if s != 1) == tuple(s for s in image_shape if s != 1):
        return
    if len(label_shape) == len(image_shape) + 1 and label_shape[1:] == image_shape:
        raise HTTPException(status_code=400, detail=f"the label holds {label_shape[0]} overlapping segments (a "
                            "layered segmentation, e.g. the hypotheses or the raters' view): keep only your lesion "
                            "segment (delete the others in Segment Editor), then Submit again.")
    raise HTTPException(status_code=400, detail=f"label shape {list(label_shape)} differs from the image's "
                        f"{list(image_shape)}: outline the image on its own voxel grid.")


def _lesion_value(label_info: Any) -> int | None:
    """The label value of the segment named ``lesion`` in 3D Slicer's ``label_info``, else ``None``."""
    if not isinstance(label_info, list):
        return None
    for entry in label_info:
        if isinstance(entry, dict) and str(entry.get("name", "")).lower() == "lesion":
            value = entry.get("idx", entry.get("id"))
            if isinstance(value, (int, float)) and float(value).is_integer():
                return int(value)
    return None


def lesion_segment_name(label_info: Any) -> str:
    """The name 3D Slicer gave the lesion segment in ``label_info`` (the entry named ``lesion``, else the entry of
    value 1), else ``lesion``."""
    value = _lesion_value(label_info) or 1
    for entry in label_info if isinstance(label_info, list) else []:
        if isinstance(entry, dict) and entry.get("idx", entry.get("id")) == value and str(entry.get("name", "")):
            return str(entry["name"])
    return "lesion"


def lesion_mask(label_file: str, image_file: str, label_info: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """The submitted label as a uint8 0/1 mask on the image's voxel grid, and the image's affine.

    Args:
        label_file: the submitted file (NIfTI, or NRRD and the other formats ITK reads).
        image_file: the image it outlines.
        label_info: 3D Slicer's ``[{"name", "idx"}, ...]``; the value of the entry named ``lesion`` is the lesion,
            else the label must hold only the values 0 and 1.

    Returns:
        (``image shape`` uint8 mask, ``4 x 4`` image affine).

    Raises:
        HTTPException: 422 unreadable label; 400 another grid or other values than background and the lesion.
    """
    from monai.transforms import LoadImage

    image = nib.load(image_file)
    shape = tuple(int(s) for s in image.shape)
    layers = nrrd_layers(label_file)
    if layers is not None and layers > 1:
        check_label_shape((layers, *shape), shape)
    try:
        if label_file.endswith((".nii", ".nii.gz")):
            lab = nib.load(label_file)
            data, affine = np.asarray(lab.dataobj), lab.affine
        else:
            loaded = LoadImage(image_only=True)(label_file)
            data, affine = np.asarray(loaded), np.asarray(loaded.affine)
    except Exception as e:  # noqa: BLE001 -- any reader error is a bad upload
        raise HTTPException(status_code=422, detail=f"the submitted label is not a readable image "
                            f"({type(e).__name__}: {e}).") from None
    check_label_shape(data.shape, shape)
    if affine is not None and not np.allclose(np.asarray(affine)[:3], image.affine[:3], atol=1e-3):
        raise HTTPException(status_code=400, detail="label geometry (origin/spacing/direction) differs from the "
                            "image's: outline the image on its own voxel grid.")
    data = np.asarray(data).reshape(shape)
    lesion = _lesion_value(label_info)
    values = set(np.unique(data).tolist())
    allowed = {0, lesion if lesion is not None else 1}
    if not values <= allowed:
        extra = sorted(values - allowed)[:5]
        raise HTTPException(status_code=400, detail=f"label holds values {extra}: expected only 0 (background) and "
                            f"{max(allowed)} (lesion); submit one lesion segment.")
    return (data == max(allowed)).astype(np.uint8), image.affine


class RaterRules:
    """Who is offered which image: the rule of a datastore that keeps each rater's label of an image, whether the
    labels live in a local studies folder (:class:`RaterDatastore`) or in a DICOMweb server
    (:class:`lib.dicomweb_datastore.SegDICOMWebDatastore`). The datastore gives :meth:`rater_names`."""

    max_raters: int = 4

    def rater_names(self) -> dict[str, list[str]]:
        """``{image id: its raters' names}`` of the images *Next Sample* may offer."""
        raise NotImplementedError

    def images_for_rater(self, rater: str | None) -> list[str]:
        """The images to offer ``rater`` (:func:`offered_to`): fewer than ``max_raters`` raters, none of them
        ``rater``; for ``None``, the images no rater has outlined."""
        return [image_id for image_id, raters in self.rater_names().items()
                if offered_to(rater, raters, self.max_raters)]

    def for_rater(self, rater: str) -> RaterView:
        """This datastore as ``rater``'s *Next Sample* sees it (:class:`RaterView`)."""
        return RaterView(self, rater)


class RaterDatastore(RaterRules, LocalDatastore):
    """MONAI Label's :class:`LocalDatastore`; labels of raters kept side by side (module docstring).

    ``max_raters`` (the model's number of graders, 4) is set by the app after construction.
    """

    _save_lock = threading.Lock()
    _add_lock = threading.Lock()

    def raters(self, image_id: str) -> dict[str, dict[str, Any]]:
        """``{rater name: label info}`` of an image (info holds ``rater``, ``ts``, ``name``, ...)."""
        obj = self._datastore.objects.get(image_id)
        if not obj:
            return {}
        return {tag[len(RATER_TAG_PREFIX):]: dict(label.info or {}) for tag, label in obj.labels.items()
                if tag.startswith(RATER_TAG_PREFIX)}

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        label_info = dict(label_info or {})
        name = rater_name(label_tag, label_info)
        if name is None:
            return super().save_label(image_id, label_filename, label_tag, label_info)
        image_file = self.get_image_uri(image_id)
        if not image_file:
            raise HTTPException(status_code=404, detail=f"unknown image {image_id!r}: not in the datastore.")
        mask, affine = lesion_mask(label_filename, image_file, label_info.get("label_info"))
        with self._save_lock:
            stored = self.raters(image_id)
            name = rater_slot(image_id, name, stored, self.max_raters)
            tag = f"{RATER_TAG_PREFIX}{name}"
            fd, tmp = tempfile.mkstemp(suffix=".nii.gz")
            os.close(fd)
            try:
                nib.save(nib.Nifti1Image(mask, affine), tmp)
                info = {**label_info, "rater": name, "lesion_voxels": int(mask.sum())}
                label_id = super().save_label(image_id, tmp, tag, info)
            finally:
                os.remove(tmp)
        logger.info(f"label of rater {name!r} for {image_id} stored under tag {tag} ({int(mask.sum())} voxels)")
        return label_id

    def _stored_image_file(self, image_id: str, ext: str) -> str | None:
        """The file of image ``image_id`` in the studies folder (listed, or a file of that name not listed yet)."""
        uri = self.get_image_uri(image_id)
        if uri and os.path.exists(uri):
            return uri
        path = os.path.realpath(os.path.join(self._datastore.image_path(), self._filename(image_id, ext)))
        return path if os.path.exists(path) else None

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """MONAI Label's ``add_image`` for a new id; an id already in the datastore keeps its file (module docstring).

        Raises:
            HTTPException: 409 when the upload differs from the stored image of its id.
        """
        upload_id, ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or upload_id
        with self._add_lock:  # two uploads of one new id: the second finds the first one's file
            stored = self._stored_image_file(image_id, ext)
            if stored is None:
                return super().add_image(image_id, image_filename, image_info)
        difference = image_difference(stored, image_filename)
        if difference is None:
            logger.info(f"upload of {image_id}: the same voxels and geometry as the stored {os.path.basename(stored)}"
                        "; kept as it is")
            return image_id
        logger.warning(f"upload of {image_id} refused: it differs from the stored {os.path.basename(stored)}: "
                       f"{difference}")
        raise HTTPException(status_code=409, detail=f"image {image_id!r} is already in the datastore "
                            f"({os.path.basename(stored)}) and this upload differs from it: {difference}. Nothing "
                            "was replaced (the stored image and its raters' labels are kept). To add this volume, "
                            "give it another name (3D Slicer uploads a volume under its name: rename it in the Data "
                            "module) and try again; to replace the stored image, remove it first (DELETE "
                            f"/datastore/image?id={quote(image_id)}, which also removes its labels).")

    def _rated(self) -> list[str]:
        return [k for k, v in self._datastore.objects.items()
                if v.labels.get(DefaultLabelTag.FINAL) or any(t.startswith(RATER_TAG_PREFIX) for t in v.labels)]

    def get_labeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Images with a final label or at least one rater's label."""
        return self._rated()

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """Images no rater has outlined yet (nor a final label)."""
        return self.images_for_rater(None)

    def rater_names(self) -> dict[str, list[str]]:
        """``{image id: its raters' names}`` of the images *Next Sample* may offer: an image with a ``final`` label
        (one stored outside the raters' tags) is never offered."""
        return {image_id: [tag[len(RATER_TAG_PREFIX):] for tag in obj.labels if tag.startswith(RATER_TAG_PREFIX)]
                for image_id, obj in self._datastore.objects.items() if not obj.labels.get(DefaultLabelTag.FINAL)}


class RaterView:
    """One rater's view of a :class:`RaterDatastore`, given to an active-learning strategy by the app's
    ``next_sample``: its unlabelled images are the ones to offer this rater (:meth:`RaterDatastore.images_for_rater`),
    so MONAI Label's strategies (``random``, ``first``) and the app's ``uncertainty`` choose among them unchanged.
    Everything else is the datastore's own.

    Args:
        store: the datastore.
        rater: the rater's name (the request's ``rater`` or ``client_id``).
    """

    def __init__(self, store: RaterRules, rater: str) -> None:
        self.store = store
        self.rater = rater

    def get_unlabeled_images(self, label_tag: str | None = None, labels: list[str] | None = None) -> list[str]:
        """The images to offer this rater."""
        return self.store.images_for_rater(self.rater)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)
