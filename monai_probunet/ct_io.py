"""CT image loading and geometry for inference: :func:`load_ct` and the lesion-centre resolution.

:func:`load_ct` reads a 2-D CT slice (NIfTI, or one DICOM file) or a 3-D CT volume (NIfTI, or a DICOM series folder)
with MONAI's ``LoadImage`` (``PydicomReader`` for DICOM: rescale slope/intercept applied, i.e. HU), or takes an
already loaded channel-first ``MetaTensor``, and refuses (``ValueError`` naming the file) what would otherwise be
guessed: DICOM that is not ``Modality == "CT"``, a DICOM folder that is not one evenly spaced series numbered in
position order (:mod:`~monai_probunet.dicom_series`; one numbered against its normal is restacked along it, as 3D
Slicer shows it), a zero or negative voxel spacing, a NIfTI without qform/sform (unknown spacing) or with complex
voxels, a single DICOM slice without position and orientation or that is not axial, intensities that are not
plausibly HU in an image without a DICOM modality or in DICOM CT stored without a negative rescale intercept.
:func:`resolve_center` maps a voxel or world (RAS/LPS millimetres) centre to voxel coordinates of the loaded array
(see :mod:`monai_probunet.inference` for the coordinate conventions).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import ApplyTransformToPoints, LoadImage

from .dicom_series import DICOMDIR_FREE, check_ct_dicom, hu_shift_missing, is_dicom, read_headers, series_files
from .dicom_slab import ReadNear, plan_slab

__all__ = [
    "DEFAULT_HU_WINDOW",
    "DEFAULT_ROI_SIZE",
    "HU_PLAUSIBLE_MIN",
    "MODALITY_KEY",
    "SPACING_HINT",
    "WORLD_FRAMES",
    "load_ct",
    "resolve_center",
]

#: the model's input crop in pixels (the built-in data: 64 x 64)
DEFAULT_ROI_SIZE = 64
#: picture formats MONAI's readers would take as an image without geometry or HU
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: HU window scaled to [0, 1] (``hu_window`` in bundle/configs/train.yaml)
DEFAULT_HU_WINDOW = (-1000.0, 400.0)
WORLD_FRAMES = ("RAS", "LPS")
#: meta key set by :func:`load_ct` on an image whose DICOM headers say CT (no HU plausibility check then)
MODALITY_KEY = "probunet_modality"
#: an image whose lowest value is above this is not plausibly CT in HU (no air, lung or fat anywhere in it)
HU_PLAUSIBLE_MIN = -200.0
SPACING_HINT = (
    "the model's in-plane pixel spacing in mm, `infer_spacing` of the bundle config (train.yaml: [1.0, 1.0] for "
    "the shipped model) or --spacing"
)


# --------------------------------------------------------------------------------------------- loading


def _check_nifti_header(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` if a NIfTI header gives no trustworthy geometry or real-valued voxels.

    The header is read as stored (``check=False``): nibabel and MONAI silently replace a zero ``pixdim`` by 1 mm
    and a negative one by its absolute value on load, take a header without any spatial orientation (``qform_code``
    and ``sform_code`` both 0) as ``pixdim`` spacing at an arbitrary position, and cast complex voxels to their real
    part: each would resample or segment the image with made-up values.

    Args:
        path: A ``.nii`` or ``.nii.gz`` file (anything else, or a corrupt header, is left to the reader).

    Raises:
        ValueError: If the voxel type is complex, the spatial ``pixdim`` or the sform's voxel sizes are zero, negative
            or not finite, or neither a qform nor an sform is set.
    """
    import nibabel as nib
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as f:
            raw = f.read(540)
        hdr = None
        for klass in (nib.Nifti1Header, nib.Nifti2Header):
            if len(raw) < klass.sizeof_hdr:
                continue
            h = klass.from_fileobj(io.BytesIO(raw[: klass.sizeof_hdr]), check=False)
            if int(h["sizeof_hdr"]) == klass.sizeof_hdr:
                hdr = h
                break
    except Exception:  # not NIfTI (or corrupt): the reader below names the problem
        return
    if hdr is None:
        return
    try:
        dtype = hdr.get_data_dtype()
    except Exception:  # noqa: BLE001 -- an unknown datatype code: the reader below names it
        dtype = None
    if dtype is not None and dtype.kind == "c":
        raise ValueError(
            f"{path}: complex-valued voxels (NIfTI datatype {dtype.name}); expected real-valued CT intensities in HU."
        )
    nd = int(max(1, min(3, int(hdr["dim"][0]))))
    zooms = [float(v) for v in hdr["pixdim"][1 : nd + 1]]
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise ValueError(
            f"{path}: voxel spacing (NIfTI pixdim) {zooms} mm is zero or negative; fix the header (there is no "
            "voxel size to resample from)."
        )
    if int(hdr["sform_code"]) == 0 and int(hdr["qform_code"]) == 0:
        raise ValueError(
            f"{path}: no spatial orientation (NIfTI qform_code and sform_code are 0), so its voxel spacing and "
            "position are unknown; write the header's sform/qform (e.g. nibabel img.set_sform(affine, code=1)) and "
            "try again."
        )
    if int(hdr["sform_code"]) > 0:
        sform = np.asarray(hdr.get_sform(), dtype=np.float64)
        sizes = np.linalg.norm(sform[:3, :nd], axis=0)
        if not np.isfinite(sform).all() or (sizes <= 1e-6).any():
            raise ValueError(
                f"{path}: the sform affine gives voxel spacing {np.round(sizes, 6).tolist()} mm, zero or not "
                "finite; fix the header."
            )


def _check_nifti_affine(path: Path, img: MetaTensor) -> None:
    """Raise ``ValueError`` naming ``path`` if MONAI read a NIfTI with another affine than its header states.

    MONAI's reader "rectifies" a header whose ``pixdim`` disagrees with its sform (or qform) by replacing that
    affine with the other one, even one whose code is 0 (i.e. ``pixdim`` spacing at an arbitrary position): such a
    contradictory header would be read with a guessed spacing, so it is refused instead.

    Args:
        path: The ``.nii`` / ``.nii.gz`` file ``img`` was read from.
        img: The image as MONAI's ``LoadImage`` returned it.

    Raises:
        ValueError: If the loaded affine is not the header's sform (code > 0) or else qform (code > 0).
    """
    import nibabel as nib

    try:
        hdr = nib.load(str(path)).header
        stated = np.asarray(hdr.get_best_affine(), dtype=np.float64)
        loaded = np.asarray(_affine4(img), dtype=np.float64)
    except Exception:  # noqa: BLE001 -- MONAI read it; nothing to compare against
        return
    if stated.shape != (4, 4) or np.allclose(loaded, stated, rtol=1e-5, atol=1e-4):
        return
    nd = int(max(1, min(3, int(hdr["dim"][0]))))
    which = "sform" if int(hdr["sform_code"]) > 0 else "qform"
    stated_mm = np.round(np.linalg.norm(stated[:3, :nd], axis=0), 6).tolist()
    zooms = [round(float(z), 6) for z in hdr.get_zooms()[:nd]]
    read_mm = np.round(np.linalg.norm(loaded[:3, :nd], axis=0), 6).tolist()
    raise ValueError(
        f"{path}: contradictory NIfTI header: its {which} gives voxel spacing {stated_mm} mm but pixdim says {zooms} "
        f"mm (MONAI reads {read_mm} mm); make them agree (e.g. save with nibabel Nifti1Image(data, affine))."
    )


def _check_hu(img: MetaTensor, source: str, allow_non_ct: bool) -> None:
    """Refuse (or with ``allow_non_ct`` warn about) an image whose values are not plausibly CT Hounsfield units.

    CT in HU has air at about -1000, lung about -850, fat about -100, soft tissue 0 to 100: a CT image of the chest
    (or a lesion-centred crop of one) has values below :data:`HU_PLAUSIBLE_MIN`. An image without any (e.g. MR,
    values 0 to 4000; CT stored without its rescale intercept; an image normalised to [0, 1]) is refused.
    """
    lo = float(img.as_tensor().min())
    hi = float(img.as_tensor().max())
    if lo <= HU_PLAUSIBLE_MIN:
        return
    msg = (
        f"{source}: intensities span [{lo:g}, {hi:g}] with nothing below {HU_PLAUSIBLE_MIN:g}, i.e. no air, lung or "
        "fat: not plausibly CT in Hounsfield units (MR? CT without its rescale slope/intercept? normalised?)"
    )
    if not allow_non_ct:
        raise ValueError(msg + "; the model segments CT in HU (pass --allow-non-ct / allow_non_ct=True to run anyway).")
    warnings.warn(msg + "; running anyway (allow_non_ct).", UserWarning, stacklevel=3)


def _series_below(folder: Path, most: int = 3, depth: int = 5) -> str:
    """Where a folder without DICOM files of its own holds them further down (a CD's or USB stick's export: a
    ``DICOMDIR`` at the top, each series in a folder of its own, ``DICOM/PA0/ST0/SE0``): ``"; its subfolders hold
    DICOM series: ..."``, each with its modality and description (the first file's), CT series first and the
    largest first among them (a scout or a dose report beside the CT is one or two files). Looks ``depth`` folders
    down at most, so that a folder given by mistake (a home) is not searched whole."""
    import pydicom

    holding = []
    for root, dirs, _ in os.walk(folder):
        if len(Path(root).relative_to(folder).parts) >= depth:
            dirs.clear()
        files = series_files(Path(root)) if Path(root) != folder else []
        if files:
            try:
                ds = pydicom.dcmread(str(files[0]), stop_before_pixels=True,
                                     specific_tags=["Modality", "SeriesDescription"])  # fmt: skip
                modality, description = str(ds.get("Modality", "") or "?"), str(ds.get("SeriesDescription", "") or "")
            except Exception:  # noqa: BLE001 -- an unreadable header: listed without it
                modality, description = "?", ""
            holding.append((modality != "CT", -len(files), str(root), modality, description))
    if not holding:
        return ""
    holding.sort()
    listed = ", ".join(
        f"{root} ({modality}{f' {description!r}' if description else ''}, {-count} file{'s' if count != -1 else ''})"
        for _, count, root, modality, description in holding[:most]
    )
    more = f" and {len(holding) - most} more" if len(holding) > most else ""
    return f"; its subfolders hold DICOM series: give one series' folder, e.g. {listed}{more}"


def load_ct(
    image: str | os.PathLike | MetaTensor,
    allow_non_ct: bool = False,
    dicom_headers: Sequence[Any] | None = None,
    near: ReadNear | None = None,
) -> tuple[MetaTensor, str]:
    """Load a CT slice or volume as a channel-first float32 ``MetaTensor`` in HU with a RAS affine.

    Args:
        image: A NIfTI file (2-D slice or 3-D volume; any format MONAI's default readers take), one DICOM file (a
            slice), a folder holding one DICOM series (a volume), or an already loaded channel-first ``MetaTensor``
            (``1 x H x W`` or ``1 x H x W x D``, e.g. from ``LoadImage(ensure_channel_first=True)``).
        allow_non_ct: Only warn (instead of refusing) when an image without a DICOM modality (NIfTI, MetaTensor) has
            intensities that are not plausibly CT in HU (nothing below -200: no air, lung or fat; e.g. MR).
        dicom_headers: For a DICOM series folder (or file): the headers of its files where the caller has read them
            (:func:`~monai_probunet.dicom_series.read_headers` of
            :func:`~monai_probunet.dicom_series.series_files`, or of the one file), so that the checks do not read
            them again; ``None``: read here.
        near: For an axial DICOM series folder: the click and how far along the slice normal its answer reaches;
            only those slices' pixels are read, placed in a volume of the whole series' shape and affine whose
            other slices are zeros (:mod:`~monai_probunet.dicom_slab`). ``None``: every slice is read.

    Returns:
        tuple: ``(MetaTensor 1 x *spatial, source name)``.

    Raises:
        FileNotFoundError: If the path does not exist.
        ValueError: If a DICOM file is not CT or unreadable, a folder holds no DICOM file or is not one evenly spaced
            series numbered in position order (:func:`~monai_probunet.dicom_series.check_ct_dicom`), the file
            cannot be read as an image, a NIfTI has no qform/sform (unknown spacing) or complex voxels, the image
            is not a single-channel 2-D/3-D image, has NaN/inf values or a zero/negative voxel spacing, or (without
            ``allow_non_ct``) its intensities are not plausibly HU.
    """
    verified_ct = against_normal = unshifted = False
    slab = None
    if isinstance(image, MetaTensor):
        source = str(image.meta.get("filename_or_obj", "") or "<MetaTensor>")
        img = image
        codes = [image.meta.get(k) for k in ("qform_code", "sform_code")]
        if all(c is not None and np.size(c) == 1 and int(np.asarray(c).item()) == 0 for c in codes):
            raise ValueError(
                f"{source}: the image was read from a NIfTI header without spatial orientation (qform_code and "
                "sform_code 0), so its voxel spacing and position are unknown; write the header's sform/qform and "
                "try again."
            )
    elif isinstance(image, (torch.Tensor, np.ndarray)):
        raise ValueError(
            "image: a plain tensor/array has no geometry; pass a file path or a channel-first MetaTensor with an "
            "affine."
        )
    else:
        path = Path(image)
        source = str(path)
        if not path.exists():
            raise FileNotFoundError(f"image {path} does not exist.")
        if path.is_dir():
            files = series_files(path)
            if not files:
                raise ValueError(f"image folder {path} holds no DICOM file (a folder must be one DICOM series)"
                                 f"{_series_below(path)}.")
            headers = dicom_headers if dicom_headers is not None and len(dicom_headers) == len(files) else None
            if near is not None and len(files) > 2 and headers is None:
                headers = read_headers(files, source)  # where the slab's files are
            against_normal = check_ct_dicom(files, source, headers=headers)
            unshifted = hu_shift_missing(files[0], headers[0] if headers else None)
            slab = plan_slab(path, files, headers, against_normal, near) if near is not None and len(files) > 2 \
                else None
            loader = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True, dtype=np.float32,
                               fname_regex=DICOMDIR_FREE if slab is None else slab.regex)
            verified_ct = True
        elif is_dicom(path):
            header = dicom_headers[0] if dicom_headers is not None and len(dicom_headers) == 1 else None
            check_ct_dicom([path], source, headers=None if header is None else [header])
            unshifted = hu_shift_missing(path, header)
            loader = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True, dtype=np.float32)
            verified_ct = True
        else:
            if path.suffix.lower() in PICTURE_SUFFIXES:
                raise ValueError(f"{path} is a {path.suffix[1:].upper()} picture: it has no HU values, pixel size or "
                                 "position in the patient; give the CT as DICOM or NIfTI.")
            if path.name.endswith((".nii", ".nii.gz")):
                _check_nifti_header(path)
            loader = LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = loader(str(path))
        except Exception as e:  # readers raise many types for a corrupt file
            raise ValueError(f"could not read image {path}: {type(e).__name__}: {e}") from e
        if not isinstance(img, MetaTensor):
            raise ValueError(f"could not read image {path} with its geometry (got {type(img).__name__}).")
        if against_normal:
            img = _along_normal(img)
        if verified_ct:
            img.meta[MODALITY_KEY] = "CT"
        elif path.name.endswith((".nii", ".nii.gz")):
            _check_nifti_affine(path, img)
    _check_image(img, source)
    if img.meta.get(MODALITY_KEY) != "CT" or unshifted:  # DICOM CT without a negative intercept: HU only if signed
        _check_hu(img, source, allow_non_ct)
    if slab is not None:
        img = slab.place(img, descending=against_normal)
    return img, source


def _along_normal(img: MetaTensor) -> MetaTensor:
    """A DICOM volume read in ``InstanceNumber`` order against its slice normal, restacked along the normal (as 3D
    Slicer and ITK stack it, so that slice ``k`` is the viewer's); its affine moved with it, the world unchanged."""
    flip = torch.eye(4, dtype=torch.float64)
    flip[2, 2], flip[2, 3] = -1.0, float(img.shape[-1] - 1)
    affine = _affine4(img) @ flip
    meta = {k: v for k, v in img.meta.items() if k != "affine"}
    meta["original_affine"] = affine.numpy()
    for key in ("00200032", "lastImagePositionPatient"):
        meta.pop(key, None)  # the first and last slices' positions, now swapped
    return MetaTensor(img.as_tensor().flip(-1), affine=affine, meta=meta)


def _check_image(img: MetaTensor, source: str) -> None:
    if img.ndim not in (3, 4):
        raise ValueError(
            f"{source}: expected a channel-first 2-D slice (1 x H x W) or 3-D volume (1 x H x W x D), got shape "
            f"{tuple(img.shape)} ({img.ndim - 1} spatial dimensions)."
        )
    if img.shape[0] != 1:
        raise ValueError(
            f"{source}: holds {img.shape[0]} values per voxel (a colour picture, a 4-D series or several images in one "
            f"file; shape {tuple(img.shape)}); expected one CT slice or volume of HU values."
        )
    if min(img.shape[1:]) < 1:
        raise ValueError(f"{source}: empty image of shape {tuple(img.shape)}.")
    if img.dtype == torch.bool or img.is_complex():
        raise ValueError(f"{source}: unsupported voxel type {img.dtype}; expected HU values.")
    bad = ~torch.isfinite(img.as_tensor().float())
    if bool(bad.any()):
        raise ValueError(f"{source}: {int(bad.sum())} voxels are NaN or infinite; expected finite HU values.")
    affine = _affine4(img)
    sizes = torch.linalg.norm(affine[:3, : img.ndim - 1], dim=0)
    if not bool(torch.isfinite(affine).all()) or bool((sizes <= 1e-6).any()):
        raise ValueError(
            f"{source}: voxel spacing {[round(float(v), 6) for v in sizes]} mm from the image's affine is zero or not "
            "finite; fix the image header."
        )


def _affine4(img: MetaTensor) -> torch.Tensor:
    """The image's voxel -> RAS affine as ``4 x 4`` float64 (a 2-D ``3 x 3`` affine gets an identity z)."""
    return to_affine_nd(3, torch.as_tensor(img.affine, dtype=torch.float64))


# --------------------------------------------------------------------------------------------- geometry


def _points(affine: torch.Tensor, pts: np.ndarray, invert: bool, lps: bool = False) -> np.ndarray:
    """Map ``N x 3`` points with MONAI's ``ApplyTransformToPoints`` (world -> voxel with ``invert``)."""
    t = ApplyTransformToPoints(dtype=torch.float64, affine=affine, invert_affine=invert, affine_lps_to_ras=lps)
    out = t(torch.as_tensor(np.asarray(pts, dtype=np.float64))[None])
    return np.asarray(out.as_tensor() if isinstance(out, MetaTensor) else out)[0]


def resolve_center(
    img: MetaTensor,
    center: Sequence[float],
    *,
    world: bool = False,
    frame: str = "RAS",
    source: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """The lesion centre as continuous voxel coordinates of ``img`` and as RAS millimetres.

    Args:
        img: ``1 x *spatial`` image (2 or 3 spatial dimensions) with its voxel -> RAS affine.
        center: Voxel coordinates (one per spatial axis), or with ``world=True`` world millimetres (3 values; 2 allowed
            for a slice, z then comes from the image plane).
        world: Interpret ``center`` as world coordinates.
        frame: ``{"RAS", "LPS"}``: The world frame of ``center`` (``(x, y, z)_RAS = (-x, -y, z)_LPS``).
        source: Name used in error messages.

    Returns:
        tuple of numpy.ndarray: ``(voxel, world_ras)``: voxel has one entry per spatial axis, world_ras 3 entries.

    Raises:
        ValueError: If the centre has the wrong length, is not finite, or lies outside the image (more than half a voxel
            beyond the border) or off a slice's plane.
    """
    nd = img.ndim - 1
    shape = tuple(int(s) for s in img.shape[1:])
    try:
        c = np.asarray([float(v) for v in center], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"center must be a sequence of numbers, got {center!r}.") from e
    if not np.isfinite(c).all():
        raise ValueError(f"center must be finite, got {center!r}.")
    frame = str(frame).upper()
    if frame not in WORLD_FRAMES:
        raise ValueError(f"frame must be one of {WORLD_FRAMES}, got {frame!r}.")
    affine = _affine4(img)
    if world:
        if len(c) not in ((2, 3) if nd == 2 else (3,)):
            raise ValueError(
                f"center: a world centre of a {nd}-D image needs {'2 or 3' if nd == 2 else '3'} coordinates, "
                f"got {len(c)} ({center!r})."
            )
        if len(c) == 2:  # in-plane world (x, y); z of the slice plane (at voxel 0, 0)
            plane = _points(affine, np.zeros((1, 3)), invert=False, lps=frame == "LPS")[0]
            c = np.array([c[0], c[1], plane[2]])
        vox3 = _points(affine, c[None], invert=True, lps=frame == "LPS")[0]
        if nd == 2 and abs(vox3[2]) > 0.5 + 1e-6:
            raise ValueError(
                f"center {list(center)} ({frame}) lies {abs(vox3[2]):.2f} voxels off the plane of the slice {source}."
            )
        voxel = vox3[:nd]
    else:
        if len(c) != nd:
            raise ValueError(
                f"center: a voxel centre of a {nd}-D image needs {nd} coordinates, got {len(c)} ({center!r})."
            )
        voxel = c
    outside = [(a, v) for a, v in enumerate(voxel) if not (-0.5 <= v <= shape[a] - 0.5)]
    if outside:
        raise ValueError(
            f"center {list(center)} ({frame + ' world' if world else 'voxel'}) maps to voxel "
            f"{np.round(voxel, 2).tolist()}, outside the image {source} of spatial shape {shape}."
        )
    vox3 = np.zeros(3)
    vox3[:nd] = voxel
    world_ras = _points(affine, vox3[None], invert=False)[0]
    return voxel, world_ras


def _slice_axis(affine: torch.Tensor, nd: int) -> int:
    """The spatial axis whose direction is most aligned with the world S (z) axis."""
    r = np.asarray(affine[:3, :nd], dtype=np.float64)
    cos = np.abs(r[2]) / np.maximum(np.linalg.norm(r, axis=0), 1e-12)
    return int(np.argmax(cos))


def _pair(value: float | Sequence[float], name: str, cast: type) -> tuple:
    vals = [value, value] if np.isscalar(value) else list(value)
    if len(vals) != 2:
        raise ValueError(f"{name} must be a number or 2 numbers (in-plane), got {value!r}.")
    out = tuple(cast(v) for v in vals)
    if any(v <= 0 for v in out):
        raise ValueError(f"{name} must be positive, got {value!r}.")
    return out
