"""Inference on a CT image: S segmentation hypotheses of the lesion at a given centre, on the input's own grid.

:func:`predict_hypotheses` is the library entry point (the CLI :mod:`monai_probunet.infer`, the bundle run id
``inferring`` and the MONAI Label app all call it):

1. **load** a 2-D CT slice (NIfTI, or one DICOM file) or a 3-D CT volume (NIfTI, or a DICOM series folder) with
   MONAI's ``LoadImage`` (``PydicomReader`` for DICOM: rescale slope/intercept applied, i.e. HU), or take an already
   loaded channel-first ``MetaTensor``; DICOM must have ``Modality == "CT"``;
2. **centre**: the lesion centre in voxel coordinates of the loaded array, or in world coordinates (``world=True``,
   millimetres, ``frame="RAS"`` or ``"LPS"``);
3. for a 3-D volume take the **axial slice through the centre** (the array axis most aligned with the world S axis);
4. window HU to ``[0, 1]`` (``ScaleIntensityRange`` with clipping, as in training), **resample in-plane** to the
   model's spacing (``Spacingd``, bilinear; the slice axis is kept), pad by the ROI (``SpatialPadd``, value 0 =
   air) and **crop** ``roi_size`` around the centre (``SpatialCropd``); the crop keeps the loaded array's axis
   order (no reorientation: for DICOM that is ``(column, row)``, the transpose of the LIDC crops' ``(row, col)``,
   which train.yaml's flips + 90-degree rotations cover);
5. draw S **hypotheses** with ``model.sample(image, S, generator)`` from a generator seeded with ``seed`` (same seed,
   same output);
6. **map back** onto the input's grid and geometry by inverting crop, pad and resampling with MONAI's ``Invertd``
   (nearest neighbour for the label maps, linear for the probability and entropy maps); for a volume the result
   is written into the centre slice of an otherwise empty volume. Outside the ROI: label 0, probability 0,
   entropy 0.

Coordinates
-----------
*Voxel* coordinates index the array as MONAI loads it (spatial axes after the channel): for NIfTI ``(i, j[, k])`` as
stored in the file; for DICOM ``(column, row[, slice])`` (MONAI's ``PydicomReader`` returns ``pixel_array.T``; a
series is stacked by slice position). Fractional values are allowed.
*World* coordinates are millimetres in the patient frame: ``frame="RAS"`` (NIfTI / MONAI: +x towards the patient's
right, +y anterior, +z superior) or ``frame="LPS"`` (DICOM, e.g. ``ImagePositionPatient`` and what DICOM viewers show:
+x left, +y posterior, +z superior); ``(x, y, z)_RAS = (-x, -y, z)_LPS``. The loaded MetaTensor's affine maps voxels to
RAS (MONAI converts DICOM's LPS geometry on load) and the saved NIfTI files carry that RAS affine. For a 2-D image a
world centre may have 2 components (in-plane x, y; z is taken from the image plane) or 3.

The lesion-presence probability is the fraction of the S hypotheses with any lesion pixel. The "ambiguous" flag
(paper Appendix E: graders would disagree on presence) comes from the fitted :class:`PresenceThreshold`
(``presence_threshold.json`` next to the checkpoint: the shipped one, or one the evaluation run wrote there when
asked with ``--save_presence_threshold_to``); without one the :data:`FALLBACK_RULE` is used and a warning is issued.

Refused with a ``ValueError`` naming the file (never guessed): a model spacing that is not given, an image smaller
than the model's field at that spacing, a zero or negative voxel spacing, intensities that are not plausibly HU in
an image without a DICOM modality (``allow_non_ct`` turns that into a warning). Outputs are written all or nothing
(:meth:`Hypotheses.save`, :func:`infer_cases`).
"""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import (
    ApplyTransformToPoints,
    Compose,
    Invertd,
    LoadImage,
    ScaleIntensityRange,
    Spacingd,
    SpatialCrop,
    SpatialCropd,
    SpatialPadd,
)

from .metrics import PresenceThreshold, pairwise_iou_distance

__all__ = [
    "DEFAULT_HU_WINDOW",
    "DEFAULT_ROI_SIZE",
    "FALLBACK_RULE",
    "Hypotheses",
    "Variant",
    "check_device",
    "find_presence_threshold",
    "group_variants",
    "infer_cases",
    "is_hypotheses_set",
    "is_inference_run",
    "load_ct",
    "load_model",
    "predict_hypotheses",
    "read_inference_cases",
    "resolve_center",
    "run_inference",
]

logger = logging.getLogger(__name__)

#: the model's input crop in pixels (the built-in data: 64 x 64)
DEFAULT_ROI_SIZE = 64
#: HU window scaled to [0, 1] (``hu_window`` in bundle/configs/train.yaml)
DEFAULT_HU_WINDOW = (-1000.0, 400.0)
#: hypotheses with IoU >= this are one variant
VARIANT_IOU = 0.9
#: the rule used for the ambiguous flag when no fitted presence threshold is available
FALLBACK_MARGIN = 0.25
FALLBACK_RULE = (
    "fallback 0.5 rule (no fitted presence_threshold.json): ambiguous iff |p - 0.5| <= 0.25, i.e. "
    "0.25 <= p <= 0.75 with p the fraction of hypotheses showing a lesion (neither presence nor absence has a 3:1 "
    "majority)"
)
WORLD_FRAMES = ("RAS", "LPS")
#: where the repository's bundle configuration lives (default network definition for :func:`load_model`)
REPO_CONFIG = Path(__file__).resolve().parents[1] / "bundle" / "configs" / "train.yaml"
PRESENCE_THRESHOLD_NAME = "presence_threshold.json"
#: meta key set by :func:`load_ct` on an image whose DICOM headers say CT (no HU plausibility check then)
MODALITY_KEY = "probunet_modality"
#: ``report.json`` / ``inference_summary.json`` carry ``{WRITTEN_BY_KEY: WRITTEN_BY}``: an output folder holding it
#: (and nothing else) was written by this module and may be replaced by a new run
WRITTEN_BY_KEY = "written_by"
WRITTEN_BY = "monai_probunet.inference"
REPORT_NAME = "report.json"
SUMMARY_NAME = "inference_summary.json"
SET_FILES = ("hypotheses.nii.gz", "mean_probability.nii.gz", "entropy.nii.gz", "variant_label.nii.gz", REPORT_NAME)
#: refuse a request whose hypotheses (on the image's grid and the model's) would need more memory than this
MAX_HYPOTHESES_BYTES = 4 * 2**30
#: an image whose lowest value is above this is not plausibly CT in HU (no air, lung or fat anywhere in it)
HU_PLAUSIBLE_MIN = -200.0
SPACING_HINT = (
    "the model's in-plane pixel spacing in mm, `infer_spacing` of the bundle config (train.yaml: [1.0, 1.0] for "
    "the shipped model) or --spacing"
)


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Variant:
    """A group of hypotheses that are the same outline up to IoU >= 0.9 (:func:`group_variants`).

    Attributes
    ----------
    members : tuple of int
        Indices (into the S hypotheses) of the hypotheses in this group, ascending.
    representative : int
        The member with the smallest summed distance ``1 - IoU`` to the other members (the medoid; ties: lowest
        index); its label map stands for the variant.
    frequency : float
        ``len(members) / S``.
    has_lesion : bool
        Whether the representative has any lesion pixel.
    area_mm2 : float
        Lesion area of the representative on the model's grid.
    """

    members: tuple[int, ...]
    representative: int
    frequency: float
    has_lesion: bool
    area_mm2: float

    @property
    def count(self) -> int:
        """Number of hypotheses in the group."""
        return len(self.members)


@dataclass
class Hypotheses:
    """S segmentation hypotheses of one lesion, on the input image's own grid, with their summaries.

    Arrays are numpy; ``*spatial`` is the input's spatial shape (``H x W`` for a slice, ``H x W x D`` for a volume,
    axes as MONAI loaded them).

    Attributes
    ----------
    labels : numpy.ndarray
        ``S x *spatial`` uint8 label maps (0 = background, 1 = lesion), nearest-neighbour resampled back.
    mean_probability : numpy.ndarray
        ``*spatial`` float32 in [0, 1]: mean over the S hypotheses of the softmax lesion probability (all
        foreground classes), linearly resampled back.
    entropy : numpy.ndarray
        ``*spatial`` float32 in bits, ``>= 0``: entropy of the mean class distribution over the hypotheses
        (predictive entropy; at most ``log2(C)`` = 1 bit for lesion/background), linearly resampled back.
    affine : numpy.ndarray
        ``4 x 4`` float64 voxel -> RAS mm affine of the input (what the saved NIfTI files carry).
    presence_count : int
        Hypotheses (of S) with any lesion pixel.
    presence_probability : float
        ``presence_count / S``.
    ambiguous : bool
        Predicted ground-truth ambiguity of lesion presence (:attr:`ambiguity_rule`).
    ambiguity_rule : str
        The rule the flag came from (the fitted threshold, or :data:`FALLBACK_RULE`).
    threshold : PresenceThreshold or None
        The fitted threshold used, ``None`` with the fallback rule.
    areas_mm2 : numpy.ndarray
        ``S`` float64 lesion areas in mm^2, counted on the model's grid (``spacing`` mm pixels) before resampling back.
    volumes_mm3 : numpy.ndarray or None
        ``S`` float64 lesion volumes in mm^3 for a 3-D input (area x slice thickness of the input), else ``None``.
    variants : list of Variant
        Distinct outlines (IoU >= 0.9 groups), most frequent first.
    center_voxel : tuple of float
        The centre in voxel coordinates of the input.
    center_world_ras : tuple of float
        The centre in RAS millimetres.
    slice_axis, slice_index : int or None
        For a volume: the spatial axis treated as axial and the slice that was segmented; ``None`` for a slice.
    model_input : numpy.ndarray
        ``roi x roi`` float32 windowed crop fed to the model.
    crop_labels : numpy.ndarray
        ``S x roi x roi`` uint8 hypotheses on the model's grid.
    source : str
        File name (or ``"<MetaTensor>"``) of the input.
    num_samples, seed : int
        S and the sampling seed.
    spacing : tuple of float
        The model's in-plane spacing in mm.
    roi_size : tuple of int
        The model's crop size.
    """

    labels: np.ndarray
    mean_probability: np.ndarray
    entropy: np.ndarray
    affine: np.ndarray
    presence_count: int
    presence_probability: float
    ambiguous: bool
    ambiguity_rule: str
    threshold: PresenceThreshold | None
    areas_mm2: np.ndarray
    volumes_mm3: np.ndarray | None
    variants: list[Variant]
    center_voxel: tuple[float, ...]
    center_world_ras: tuple[float, ...]
    slice_axis: int | None
    slice_index: int | None
    model_input: np.ndarray
    crop_labels: np.ndarray
    source: str
    num_samples: int
    seed: int
    spacing: tuple[float, float]
    roi_size: tuple[int, int]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The input's spatial shape."""
        return tuple(self.labels.shape[1:])

    @property
    def most_frequent_label(self) -> np.ndarray:
        """``*spatial`` uint8: the representative hypothesis of the most frequent variant."""
        return self.labels[self.variants[0].representative]

    def summary(self, values: np.ndarray | None) -> dict[str, float] | None:
        """Spread of per-hypothesis values: ``{mean, std, min, median, max}`` (``None`` for ``None``)."""
        if values is None:
            return None
        v = np.asarray(values, dtype=np.float64)
        return {
            "mean": float(v.mean()),
            "std": float(v.std()),
            "min": float(v.min()),
            "median": float(np.median(v)),
            "max": float(v.max()),
        }

    def to_report(self) -> dict[str, Any]:
        """JSON-serialisable summary (what :meth:`save` writes as ``report.json``)."""
        thickness = None
        if self.volumes_mm3 is not None and self.slice_axis is not None:
            thickness = float(np.linalg.norm(self.affine[:3, self.slice_axis]))
        return {
            "source": self.source,
            "spatial_shape": list(self.spatial_shape),
            "affine_ras": np.asarray(self.affine, dtype=float).tolist(),
            "center_voxel": [float(c) for c in self.center_voxel],
            "center_world_ras": [float(c) for c in self.center_world_ras],
            "slice_axis": self.slice_axis,
            "slice_index": self.slice_index,
            "num_samples": int(self.num_samples),
            "seed": int(self.seed),
            "model_spacing_mm": [float(s) for s in self.spacing],
            "roi_size": [int(r) for r in self.roi_size],
            "presence_count": int(self.presence_count),
            "presence_probability": float(self.presence_probability),
            "ambiguous": bool(self.ambiguous),
            "ambiguity_rule": self.ambiguity_rule,
            "threshold": None if self.threshold is None else self.threshold.to_dict(),
            "areas_mm2": [float(a) for a in self.areas_mm2],
            "area_mm2_spread": self.summary(self.areas_mm2),
            "volumes_mm3": None if self.volumes_mm3 is None else [float(v) for v in self.volumes_mm3],
            "volume_mm3_spread": self.summary(self.volumes_mm3),
            "slice_thickness_mm": thickness,
            "area_grid": "model grid (model_spacing_mm pixels) before resampling back",
            "entropy_units": "bits",
            "variant_iou": VARIANT_IOU,
            "num_variants": len(self.variants),
            "variants": [
                {
                    "rank": r,
                    "count": v.count,
                    "frequency": float(v.frequency),
                    "members": list(v.members),
                    "representative": int(v.representative),
                    "has_lesion": bool(v.has_lesion),
                    "area_mm2": float(v.area_mm2),
                    "volume_mm3": None if thickness is None else float(v.area_mm2 * thickness),
                }
                for r, v in enumerate(self.variants)
            ],
            **self.extra,
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write NIfTI files with the input's affine and a JSON report into ``out_dir``, all or nothing.

        The set is written into a temporary sibling folder and moved onto ``out_dir`` when complete, so a failed
        write leaves the previous ``out_dir`` as it was (and no temporary folder). ``out_dir`` may be new, empty,
        or an earlier set written by this method (:func:`is_hypotheses_set`: then it is replaced as a whole);
        anything else is refused with :class:`~monai_probunet.io_utils.OutputFolderError` (a ``ValueError``)
        before anything is written.

        Files
        -----
        ``hypotheses.nii.gz``
            uint8, 4-D: ``*spatial x S`` for a volume, ``H x W x 1 x S`` for a slice (hypothesis = 4th axis).
        ``mean_probability.nii.gz``, ``entropy.nii.gz``
            float32 ``*spatial``.
        ``variant_label.nii.gz``
            uint8 ``*spatial``: the most frequent variant's label map.
        ``report.json``
            :meth:`to_report` plus ``files`` (name -> file name) and ``written_by``.

        Returns
        -------
        dict
            Name -> written path (keys ``hypotheses``, ``mean_probability``, ``entropy``, ``variant_label``,
            ``report``).
        """
        from .io_utils import staged_dir

        out = Path(out_dir)
        with staged_dir(out, is_ours=is_hypotheses_set, what="output folder") as tmp:
            names = self.write_set(tmp)
        return {k: out / v.name for k, v in names.items()}

    def write_set(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write the files of :meth:`save` into an existing, empty ``folder`` (no staging; :meth:`save` stages)."""
        import nibabel as nib

        out = Path(folder)
        affine = np.asarray(self.affine, dtype=np.float64)
        stack = np.moveaxis(self.labels, 0, -1)  # *spatial x S
        if self.labels.ndim == 3:  # a slice: H x W x 1 x S, so that axis 4 holds the hypotheses
            stack = stack[:, :, None, :]
        arrays = {
            "hypotheses": stack.astype(np.uint8),
            "mean_probability": self.mean_probability.astype(np.float32),
            "entropy": self.entropy.astype(np.float32),
            "variant_label": self.most_frequent_label.astype(np.uint8),
        }
        paths: dict[str, Path] = {}
        for name, arr in arrays.items():
            img = nib.Nifti1Image(np.ascontiguousarray(arr), affine)
            img.header.set_xyzt_units("mm")
            paths[name] = out / f"{name}.nii.gz"
            nib.save(img, str(paths[name]))
        report = self.to_report()
        report["files"] = {k: p.name for k, p in paths.items()}
        report[WRITTEN_BY_KEY] = WRITTEN_BY
        paths["report"] = out / REPORT_NAME
        paths["report"].write_text(json.dumps(report, indent=1))
        return paths


def _marked(path: Path) -> bool:
    """Whether ``path`` is a JSON object carrying this module's ``written_by`` marker."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get(WRITTEN_BY_KEY) == WRITTEN_BY


def is_hypotheses_set(folder: str | os.PathLike) -> bool:
    """True iff ``folder`` holds a set written by :meth:`Hypotheses.save` and nothing else (safe to replace)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return False
    names = {p.name for p in folder.iterdir()}
    return REPORT_NAME in names and names <= set(SET_FILES) and _marked(folder / REPORT_NAME)


def is_inference_run(folder: str | os.PathLike) -> bool:
    """True iff ``folder`` holds a run written by :func:`infer_cases` (``inference_summary.json`` with the marker
    plus case folders that are :func:`is_hypotheses_set`) and nothing else (safe to replace)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink() or not _marked(folder / SUMMARY_NAME):
        return False
    return all(p.name == SUMMARY_NAME or is_hypotheses_set(p) for p in folder.iterdir())


# --------------------------------------------------------------------------------------------- loading


def _is_dicom(path: Path) -> bool:
    from pydicom.misc import is_dicom

    try:
        return path.suffix.lower() == ".dcm" or is_dicom(str(path))
    except OSError:
        return False


def _check_ct_dicom(files: Sequence[Path], source: str) -> None:
    """Raise ``ValueError`` unless every DICOM header in ``files`` says ``Modality == "CT"``."""
    import pydicom

    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception as e:  # pydicom raises many types for a broken file
            raise ValueError(f"{f} is not a readable DICOM file ({type(e).__name__}: {e}).") from e
        modality = getattr(ds, "Modality", None)
        if modality != "CT":
            raise ValueError(
                f"{source}: DICOM file {f.name} has Modality {modality!r}; this model segments CT (HU) only."
            )
        spacing = getattr(ds, "PixelSpacing", None)
        try:
            ok = spacing is not None and len(spacing) == 2 and all(float(v) > 0 for v in spacing)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"{f}: PixelSpacing {None if spacing is None else list(spacing)!r} is missing or not positive; "
                "the pixel size in mm is needed to resample to the model's spacing."
            )


def _check_nifti_header(path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` if a NIfTI header's spatial voxel sizes are zero or negative.

    The header is read as stored (``check=False``): nibabel and MONAI silently replace a zero ``pixdim`` by 1 mm
    and a negative one by its absolute value on load, which would resample the image with a made-up spacing.
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
    nd = int(max(1, min(3, int(hdr["dim"][0]))))
    zooms = [float(v) for v in hdr["pixdim"][1 : nd + 1]]
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise ValueError(
            f"{path}: voxel spacing (NIfTI pixdim) {zooms} mm is zero or negative; fix the header (there is no "
            "voxel size to resample from)."
        )
    if int(hdr["sform_code"]) > 0:
        sform = np.asarray(hdr.get_sform(), dtype=np.float64)
        sizes = np.linalg.norm(sform[:3, :nd], axis=0)
        if not np.isfinite(sform).all() or (sizes <= 1e-6).any():
            raise ValueError(
                f"{path}: the sform affine gives voxel spacing {np.round(sizes, 6).tolist()} mm, zero or not "
                "finite; fix the header."
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


def load_ct(image: str | os.PathLike | MetaTensor, allow_non_ct: bool = False) -> tuple[MetaTensor, str]:
    """Load a CT slice or volume as a channel-first float32 ``MetaTensor`` in HU with a RAS affine.

    Parameters
    ----------
    image : str, path or MetaTensor
        A NIfTI file (2-D slice or 3-D volume; any format MONAI's default readers take), one DICOM file (a slice),
        a folder holding one DICOM series (a volume), or an already loaded channel-first ``MetaTensor``
        (``1 x H x W`` or ``1 x H x W x D``, e.g. from ``LoadImage(ensure_channel_first=True)``).
    allow_non_ct : bool
        Only warn (instead of refusing) when an image without a DICOM modality (NIfTI, MetaTensor) has intensities
        that are not plausibly CT in HU (nothing below -200: no air, lung or fat; e.g. MR).

    Returns
    -------
    tuple
        ``(MetaTensor 1 x *spatial, source name)``.

    Raises
    ------
    FileNotFoundError
        If the path does not exist.
    ValueError
        If a DICOM file is not CT or unreadable, a folder holds no DICOM file, the file cannot be read as an image,
        the image is not a single-channel 2-D/3-D image, has NaN/inf values or a zero/negative voxel spacing, or
        (without ``allow_non_ct``) its intensities are not plausibly HU.
    """
    verified_ct = False
    if isinstance(image, MetaTensor):
        source = str(image.meta.get("filename_or_obj", "") or "<MetaTensor>")
        img = image
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
            files = sorted(p for p in path.iterdir() if p.is_file() and _is_dicom(p))
            if not files:
                raise ValueError(f"image folder {path} holds no DICOM file (a folder must be one DICOM series).")
            _check_ct_dicom(files, source)
            loader = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True, dtype=np.float32)
            verified_ct = True
        elif _is_dicom(path):
            _check_ct_dicom([path], source)
            loader = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True, dtype=np.float32)
            verified_ct = True
        else:
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
        if verified_ct:
            img.meta[MODALITY_KEY] = "CT"
    _check_image(img, source)
    if img.meta.get(MODALITY_KEY) != "CT":
        _check_hu(img, source, allow_non_ct)
    return img, source


def _check_image(img: MetaTensor, source: str) -> None:
    if img.ndim not in (3, 4):
        raise ValueError(
            f"{source}: expected a channel-first 2-D slice (1 x H x W) or 3-D volume (1 x H x W x D), got shape "
            f"{tuple(img.shape)} ({img.ndim - 1} spatial dimensions)."
        )
    if img.shape[0] != 1:
        raise ValueError(
            f"{source}: expected a single-channel CT image (channel-first 1 x *spatial), got {img.shape[0]} channels "
            f"(shape {tuple(img.shape)})."
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

    Parameters
    ----------
    img : MetaTensor
        ``1 x *spatial`` image (2 or 3 spatial dimensions) with its voxel -> RAS affine.
    center : sequence of float
        Voxel coordinates (one per spatial axis), or with ``world=True`` world millimetres (3 values; 2 allowed
        for a slice, z then comes from the image plane).
    world : bool
        Interpret ``center`` as world coordinates.
    frame : {"RAS", "LPS"}
        The world frame of ``center`` (``(x, y, z)_RAS = (-x, -y, z)_LPS``).
    source : str
        Name used in error messages.

    Returns
    -------
    tuple of numpy.ndarray
        ``(voxel, world_ras)``: voxel has one entry per spatial axis, world_ras 3 entries.

    Raises
    ------
    ValueError
        If the centre has the wrong length, is not finite, or lies outside the image (more than half a voxel
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


# --------------------------------------------------------------------------------------------- variants


def group_variants(labels: torch.Tensor, pixel_area_mm2: float, iou: float = VARIANT_IOU) -> list[Variant]:
    """Group hypotheses whose pairwise IoU is ``>= iou`` into variants, most frequent first.

    Leader clustering in hypothesis order over ``d = 1 - IoU`` from :func:`pairwise_iou_distance` (lesion class,
    empty vs empty = IoU 1): hypothesis ``i`` joins the first existing group whose first member is within
    ``1 - iou`` of it, else it opens a new group. Groups are ordered by size (descending), then by their first
    member.

    Parameters
    ----------
    labels : torch.Tensor
        ``S x *spatial`` label maps.
    pixel_area_mm2 : float
        Area of one pixel (for ``Variant.area_mm2``).
    iou : float
        Grouping threshold.

    Returns
    -------
    list of Variant
    """
    s = labels.shape[0]
    num_classes = max(2, int(labels.max()) + 1)
    d = pairwise_iou_distance(labels[None].long(), classes=tuple(range(1, num_classes)))[0].double().cpu().numpy()
    tol = 1.0 - iou + 1e-9
    groups: list[list[int]] = []
    for i in range(s):
        for g in groups:
            if d[i, g[0]] <= tol:
                g.append(i)
                break
        else:
            groups.append([i])
    groups.sort(key=lambda g: (-len(g), g[0]))
    flat = labels.reshape(s, -1)
    out = []
    for g in groups:
        sub = d[np.ix_(g, g)].sum(axis=1)
        rep = g[int(np.argmin(sub))]
        area = float((flat[rep] > 0).sum()) * pixel_area_mm2
        out.append(
            Variant(members=tuple(g), representative=rep, frequency=len(g) / s, has_lesion=area > 0, area_mm2=area)
        )
    return out


# --------------------------------------------------------------------------------------------- inference


def _ambiguity(
    count: int, num_samples: int, threshold: PresenceThreshold | None
) -> tuple[bool, str]:
    p = count / num_samples
    if threshold is None:
        return bool(abs(p - 0.5) <= FALLBACK_MARGIN + 1e-12), FALLBACK_RULE
    rule = (
        f"fitted presence threshold: ambiguous iff {threshold.low} < count < {threshold.high} lesion-presence "
        f"count out of {threshold.num_samples} hypotheses (validation accuracy {threshold.accuracy:.3f})"
    )
    c = count
    if threshold.num_samples != num_samples:
        c = int(round(p * threshold.num_samples))
        warnings.warn(
            f"the presence threshold was fitted on {threshold.num_samples} hypotheses, these are {num_samples}: "
            f"the count is rescaled to {c} of {threshold.num_samples}.",
            stacklevel=3,
        )
        rule += f"; count rescaled from {count} of {num_samples}"
    return bool(threshold.predict(np.array([c]))[0]), rule


def _as_threshold(threshold: PresenceThreshold | str | os.PathLike | Mapping | None) -> PresenceThreshold | None:
    if threshold is None or isinstance(threshold, PresenceThreshold):
        return threshold
    if isinstance(threshold, Mapping):
        return PresenceThreshold.from_dict(dict(threshold))
    from .metrics.presence import load_presence_threshold

    return load_presence_threshold(threshold)


def predict_hypotheses(
    image: str | os.PathLike | MetaTensor,
    center: Sequence[float],
    model: nn.Module,
    *,
    world: bool = False,
    frame: str = "RAS",
    spacing: float | Sequence[float] | None = None,
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    num_samples: int = 16,
    seed: int = 0,
    threshold: PresenceThreshold | str | os.PathLike | Mapping | None = None,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    device: str | torch.device = "cpu",
    allow_non_ct: bool = False,
) -> Hypotheses:
    """Draw S segmentation hypotheses of the lesion at ``center`` and map them onto the input's grid.

    Parameters
    ----------
    image : str, path or MetaTensor
        2-D CT slice (NIfTI or one DICOM file) or 3-D CT volume (NIfTI or a DICOM series folder) in HU, or a loaded
        channel-first ``MetaTensor`` ``1 x *spatial`` (see :func:`load_ct`).
    center : sequence of float
        Lesion centre: voxel coordinates of the loaded array, or world mm with ``world=True`` (module docstring).
    model : torch.nn.Module
        A network with ``sample(image B x 1 x H x W, num_samples, generator) -> B x S x C x H x W`` logits
        (:class:`~monai_probunet.networks.ProbUNet` and the baselines); put into eval mode.
    world : bool
        ``center`` is in world coordinates.
    frame : {"RAS", "LPS"}
        World frame of ``center``.
    spacing : float or pair of float
        The model's in-plane pixel spacing in mm (required: ``infer_spacing`` of the model's bundle config, see
        :func:`load_model`; there is no default, a wrong spacing silently rescales every lesion).
    roi_size : int or pair of int
        The model's crop size in pixels. The image must cover it at ``spacing`` (an image smaller than the model's
        field is refused rather than padded); where the crop reaches past the image border (a centre near the
        edge) the outside is air and hypotheses there are dropped, so areas and presence count only image pixels.
    num_samples : int
        S, hypotheses to draw (16 in the paper).
    seed : int
        Seed of the latent-noise generator (same seed, same hypotheses).
    threshold : PresenceThreshold, path, dict or None
        The fitted lesion-presence rule (or the path of ``presence_threshold.json``); ``None``: the
        :data:`FALLBACK_RULE` with a warning.
    hu_window : pair of float
        HU range scaled to ``[0, 1]`` with clipping (as in training).
    device : str or torch.device
        Where the model runs (it is moved there).
    allow_non_ct : bool
        Warn instead of refusing when an image without a DICOM modality has intensities that are not plausibly
        HU (:func:`load_ct`).

    Returns
    -------
    Hypotheses
        Label maps ``S x *spatial``, mean probability and entropy ``*spatial``, presence probability, ambiguous
        flag, areas/volumes and variants.

    Raises
    ------
    ValueError
        For a bad image (NaN/inf voxels, wrong rank or channels, non-CT DICOM or non-HU intensities, unreadable
        file, zero/negative spacing, smaller than the model's field), a centre outside the image, or bad
        parameters.
    FileNotFoundError
        If the image path does not exist.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}.")
    if not hasattr(model, "sample"):
        raise ValueError(f"model {type(model).__name__} has no sample(image, num_samples, generator) method.")
    if spacing is None:
        raise ValueError(f"spacing is required: {SPACING_HINT}.")
    spacing2 = _pair(spacing, "spacing", float)
    roi2 = _pair(roi_size, "roi_size", int)
    if len(hu_window) != 2 or not float(hu_window[0]) < float(hu_window[1]):
        raise ValueError(f"hu_window must be [low, high] with low < high, got {hu_window!r}.")
    thr = _as_threshold(threshold)
    device = torch.device(device)

    img, source = load_ct(image, allow_non_ct=allow_non_ct)
    need = int(num_samples) * (int(np.prod(img.shape[1:])) + roi2[0] * roi2[1] * 4 * 4 * 3)
    if need > MAX_HYPOTHESES_BYTES:
        raise ValueError(
            f"num_samples={num_samples} hypotheses of {source} (spatial shape {tuple(img.shape[1:])}) would need about "
            f"{need / 2**30:.1f} GiB; at most {MAX_HYPOTHESES_BYTES / 2**30:.0f} GiB: draw fewer (--num-samples)."
        )
    voxel, world_ras = resolve_center(img, center, world=world, frame=frame, source=source)
    nd = img.ndim - 1
    affine = _affine4(img)

    # 1. the axial slice through the centre (3-D): a 1-voxel-thick crop along the slice axis
    slice_axis = slice_index = None
    if nd == 3:
        slice_axis = _slice_axis(affine, nd)
        slice_index = int(np.clip(np.floor(voxel[slice_axis] + 0.5), 0, img.shape[1 + slice_axis] - 1))
        start = [0, 0, 0]
        end = list(img.shape[1:])
        start[slice_axis], end[slice_axis] = slice_index, slice_index + 1
        plane = SpatialCrop(roi_start=start, roi_end=end)(img)
        plane = MetaTensor(plane.as_tensor(), affine=plane.affine, meta={"filename_or_obj": source})
    else:
        plane = MetaTensor(img.as_tensor(), affine=img.affine, meta={"filename_or_obj": source})
    plane_shape = tuple(int(s) for s in plane.shape[1:])

    # 2. window, resample in-plane, pad, crop around the centre (all invertible MONAI transforms)
    plane = ScaleIntensityRange(
        a_min=float(hu_window[0]), a_max=float(hu_window[1]), b_min=0.0, b_max=1.0, clip=True
    )(plane.float())
    inplane = [a for a in range(nd) if a != slice_axis]
    pixdim = [-1.0] * nd
    pad_size = [-1] * nd
    crop_size = [1] * nd
    for a, s, r in zip(inplane, spacing2, roi2):
        pixdim[a], crop_size[a] = s, r
    spacing_t = Spacingd(keys="image", pixdim=pixdim, mode="bilinear", padding_mode="border")
    data = spacing_t({"image": plane})
    resampled = [int(data["image"].shape[1 + a]) for a in inplane]
    if any(n < r for n, r in zip(resampled, roi2)):
        extent = [float(np.linalg.norm(np.asarray(affine)[:3, a])) * plane_shape[a] for a in inplane]
        raise ValueError(
            f"{source}: the image ({' x '.join(f'{e:.1f}' for e in extent)} mm in-plane, {resampled[0]} x "
            f"{resampled[1]} px at the model's {spacing2[0]:g} x {spacing2[1]:g} mm) is smaller than the model's "
            f"field of {roi2[0]} x {roi2[1]} px ({roi2[0] * spacing2[0]:g} x {roi2[1] * spacing2[1]:g} mm); give "
            "the whole slice, not a small crop."
        )
    inside_plane = MetaTensor(torch.ones_like(plane.as_tensor()), affine=plane.affine)
    for a in inplane:
        pad_size[a] = int(data["image"].shape[1 + a]) + crop_size[a]
    pad_t = SpatialPadd(keys="image", spatial_size=pad_size, mode="constant", value=0.0)
    data = pad_t(data)
    vox_padded = _points(_affine4(data["image"]), np.asarray(world_ras)[None], invert=True)[0][:nd]
    roi_center = [int(np.floor(v + 0.5)) for v in vox_padded]
    if slice_axis is not None:
        roi_center[slice_axis] = 0
    crop_t = SpatialCropd(keys="image", roi_center=roi_center, roi_size=crop_size)
    data = crop_t(data)
    chain = Compose([spacing_t, pad_t, crop_t])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inside = crop_t(pad_t(spacing_t({"image": inside_plane})))["image"].as_tensor() > 0.5
    crop = data["image"]
    crop_pixdim = [float(np.linalg.norm(np.asarray(crop.affine)[:3, a])) for a in inplane]
    pixel_area = float(np.prod(crop_pixdim))

    # 3. sample S hypotheses on the model's grid
    x = crop.as_tensor().float()
    if slice_axis is not None:
        x = x.squeeze(1 + slice_axis)
    x = x[None].to(device)  # 1 x 1 x roi x roi
    model = model.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(int(seed))
    with torch.no_grad():
        logits = model.sample(x, int(num_samples), generator=generator)
    if logits.ndim != 5 or logits.shape[:2] != (1, num_samples) or tuple(logits.shape[3:]) != tuple(x.shape[2:]):
        raise ValueError(
            f"model.sample returned shape {tuple(logits.shape)}, expected 1 x {num_samples} x C x {tuple(x.shape[2:])}."
        )
    probs = torch.softmax(logits[0].float(), dim=1).cpu()  # S x C x roi x roi
    inside2 = inside[0].squeeze(slice_axis) if slice_axis is not None else inside[0]  # roi x roi
    crop_labels = probs.argmax(dim=1) * inside2  # S x roi x roi, 0 outside the image
    mean = probs.mean(dim=0)  # C x roi x roi
    fg = mean[1:].sum(dim=0)
    ent = -(torch.where(mean > 0, mean * torch.log2(mean.clamp_min(1e-30)), torch.zeros_like(mean))).sum(dim=0)

    # 4. map back onto the input's grid: Invertd undoes crop, pad and resampling
    def on_crop_grid(t: torch.Tensor) -> MetaTensor:
        if slice_axis is not None:
            t = t.unsqueeze(1 + slice_axis)
        return MetaTensor(t.float(), affine=crop.affine, meta={"filename_or_obj": source})

    data["hyp"] = on_crop_grid(crop_labels)
    data["maps"] = on_crop_grid(torch.stack([fg, ent]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inv = Invertd(keys=["hyp", "maps"], transform=chain, orig_keys="image", nearest_interp=[True, False])(data)
    hyp = torch.as_tensor(inv["hyp"].as_tensor()).round().clamp(0, 255).to(torch.uint8).numpy()
    maps = torch.as_tensor(inv["maps"].as_tensor()).float().numpy()
    if tuple(hyp.shape[1:]) != plane_shape or tuple(maps.shape[1:]) != plane_shape:
        raise RuntimeError(f"inverse mapping returned {hyp.shape[1:]}, expected the slice grid {plane_shape}.")
    mean_prob = np.clip(maps[0], 0.0, 1.0)
    entropy = np.clip(maps[1], 0.0, None)
    spatial = tuple(int(s) for s in img.shape[1:])
    if slice_axis is not None:  # write the slice into an otherwise empty volume
        labels = np.zeros((num_samples, *spatial), dtype=np.uint8)
        mp = np.zeros(spatial, dtype=np.float32)
        en = np.zeros(spatial, dtype=np.float32)
        idx = [slice(None)] * nd
        idx[slice_axis] = slice(slice_index, slice_index + 1)
        labels[(slice(None), *idx)] = hyp
        mp[tuple(idx)] = mean_prob
        en[tuple(idx)] = entropy
    else:
        labels, mp, en = hyp, mean_prob.astype(np.float32), entropy.astype(np.float32)

    # 5. summaries (on the model's grid)
    present = (crop_labels.reshape(num_samples, -1) > 0).any(dim=1)
    count = int(present.sum())
    ambiguous, rule = _ambiguity(count, int(num_samples), thr)
    if thr is None:
        warnings.warn(f"no fitted presence threshold given: {FALLBACK_RULE}.", UserWarning, stacklevel=2)
    areas = (crop_labels.reshape(num_samples, -1) > 0).sum(dim=1).double().numpy() * pixel_area
    volumes = None
    if slice_axis is not None:
        volumes = areas * float(np.linalg.norm(np.asarray(affine)[:3, slice_axis]))
    variants = group_variants(crop_labels, pixel_area)
    return Hypotheses(
        labels=labels,
        mean_probability=mp,
        entropy=en,
        affine=np.asarray(affine, dtype=np.float64),
        presence_count=count,
        presence_probability=count / num_samples,
        ambiguous=ambiguous,
        ambiguity_rule=rule,
        threshold=thr,
        areas_mm2=areas,
        volumes_mm3=volumes,
        variants=variants,
        center_voxel=tuple(float(v) for v in voxel),
        center_world_ras=tuple(float(v) for v in world_ras),
        slice_axis=slice_axis,
        slice_index=slice_index,
        model_input=x[0, 0].cpu().numpy(),
        crop_labels=crop_labels.to(torch.uint8).numpy(),
        source=source,
        num_samples=int(num_samples),
        seed=int(seed),
        spacing=spacing2,
        roi_size=roi2,
    )


# --------------------------------------------------------------------------------------------- model & threshold


class _LazyModule:
    """Stands for ``import name`` in a config's ``imports``: the module is imported at the first attribute access
    (a submodule too: ``monai_probunet.bundle_utils``), so resolving ``network_def`` imports only what it uses."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        import importlib

        module = importlib.import_module(self._name)
        try:
            return getattr(module, attr)
        except AttributeError:
            return importlib.import_module(f"{self._name}.{attr}")


def _defer_imports(parser: Any) -> None:
    """Replace the ``$import a.b`` entries of a parsed config's ``imports`` by :class:`_LazyModule` globals.

    MONAI evaluates every import statement of a config whenever it resolves any item; train.yaml imports ignite and
    the training modules, which the inference path does not need (seconds of import time).
    """
    import re

    imports = parser.get("imports")
    if not isinstance(imports, list):
        return
    keep = []
    for item in imports:
        m = re.fullmatch(r"\$import\s+([\w.]+)(?:\s+as\s+(\w+))?\s*", str(item))
        if m is None:
            keep.append(item)
            continue
        name, alias = m.group(1), m.group(2)
        target = name if alias else name.split(".")[0]
        parser.globals[alias or target] = _LazyModule(target)
    parser["imports"] = keep


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, refusing (``ValueError``) a malformed name or a CUDA/MPS device that is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ValueError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1): {e}") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: CUDA is not available on this machine (use --device cpu).")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {device!r}: MPS is not available on this machine (use --device cpu).")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: unsupported device type {dev.type!r} (use cpu or cuda).")
    return dev


def load_model(
    ckpt_path: str | os.PathLike,
    config_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    network_id: str = "network_def",
    device: str | torch.device = "cpu",
    spacing: float | Sequence[float] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network from a bundle config and load a checkpoint into it (``weights_only=True``).

    Parameters
    ----------
    ckpt_path : str or path
        ``model.pt`` (a state dict, or a checkpoint dict holding it under ``"model"``).
    config_file : path or list of paths, optional
        Bundle config file(s) defining ``network_id`` (default: the repository's ``bundle/configs/train.yaml``).
    network_id : str
        Config id of the network definition.
    device : str or torch.device
        Where to put the network (:func:`check_device`).
    spacing : float or pair of float, optional
        The model's in-plane spacing in mm, overriding the config's ``infer_spacing``.

    Returns
    -------
    tuple
        ``(network in eval mode, settings)`` where ``settings`` holds ``hu_window`` (config, else
        :data:`DEFAULT_HU_WINDOW`), ``spacing`` (``spacing``, else the config's ``infer_spacing``) and ``roi_size``
        (config's ``infer_roi_size``, else :data:`DEFAULT_ROI_SIZE`).

    Raises
    ------
    FileNotFoundError
        A missing config or checkpoint file.
    ValueError
        A config that does not parse or defines no network, no ``infer_spacing`` (and no ``spacing`` given), a
        checkpoint that is not a readable state dict of that network, an unavailable device.
    """
    dev = check_device(device)
    from monai.bundle import ConfigParser

    from .io_utils import load_network_weights

    files = [REPO_CONFIG] if config_file is None else config_file
    files = [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"config file {f} does not exist.")
    parser = ConfigParser()
    try:
        parser.read_config(files)
    except Exception as e:  # yaml/json raise many types
        raise ValueError(f"config {files} could not be read: {type(e).__name__}: {' '.join(str(e).split())}") from e
    _defer_imports(parser)
    if network_id not in parser:
        raise ValueError(f"config {files} defines no {network_id!r}.")
    if spacing is None and "infer_spacing" not in parser:
        raise ValueError(f"config {files} defines no infer_spacing: {SPACING_HINT}.")
    try:
        network = parser.get_parsed_content(network_id, instantiate=True)
        settings = {
            "hu_window": tuple(parser.get_parsed_content("hu_window")) if "hu_window" in parser else DEFAULT_HU_WINDOW,
            "spacing": spacing if spacing is not None else parser.get_parsed_content("infer_spacing"),
            "roi_size": parser.get_parsed_content("infer_roi_size") if "infer_roi_size" in parser else DEFAULT_ROI_SIZE,
        }
    except Exception as e:  # a config expression can raise anything
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"config {files}: {network_id!r} could not be built: {type(e).__name__}: {msg}") from e
    _pair(settings["spacing"], "infer_spacing", float)
    load_network_weights(network, ckpt_path)
    return network.to(dev).eval(), settings


def find_presence_threshold(ckpt_path: str | os.PathLike) -> PresenceThreshold | None:
    """The fitted threshold in ``presence_threshold.json`` next to ``ckpt_path``, or ``None`` if there is none."""
    path = Path(ckpt_path).parent / PRESENCE_THRESHOLD_NAME
    if not path.is_file():
        return None
    return _as_threshold(path)


# --------------------------------------------------------------------------------------------- many images


def _case_entry(raw: Any, image: str, where: str) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        if "center" not in raw:
            raise ValueError(f"{where}: entry for {image} has no 'center'.")
        entry = {"center": raw["center"], "world": bool(raw.get("world", False)), "frame": raw.get("frame", "RAS")}
        if "case_id" in raw:
            entry["case_id"] = str(raw["case_id"])
    else:
        entry = {"center": raw, "world": False, "frame": "RAS"}
    if not isinstance(entry["center"], (list, tuple)) or not entry["center"]:
        raise ValueError(f"{where}: center of {image} must be a list of numbers, got {entry['center']!r}.")
    return entry


def read_inference_cases(
    dataset_dir: str | os.PathLike, centers: str | os.PathLike | None = None, split: str = "test"
) -> list[dict[str, Any]]:
    """The images to run on and their lesion centres.

    Sources, in this order:

    1. ``centers`` (or ``<dataset_dir>/centers.json``): a dict ``{image: center}`` where ``image`` is a path
       relative to ``dataset_dir`` (or absolute) and ``center`` is ``[x, y(, z)]`` voxel coordinates or
       ``{"center": [...], "world": true, "frame": "LPS"|"RAS"}``; or a list of ``{"image", "center", ...}``.
    2. ``<dataset_dir>/datalist.json`` (the project's on-disk format): the entries of ``split``; an entry's
       ``center`` if it has one, else the image's centre voxel (the built-in data are lesion-centred crops).

    Returns
    -------
    list of dict
        ``{"image": absolute path, "center": list | None, "world": bool, "frame": str, "case_id": str}``
        (``center`` None = the image centre).
    """
    root = Path(dataset_dir)
    cpath = Path(centers) if centers is not None else root / "centers.json"
    cases: list[dict[str, Any]] = []

    def _abs(p: str) -> str:
        q = Path(p)
        return str(q if q.is_absolute() else root / q)

    def _case_id(p: str) -> str:
        name = Path(p.rstrip("/")).name
        for ext in (".nii.gz", ".nii", ".dcm"):
            if name.endswith(ext):
                return name[: -len(ext)]
        return name

    if centers is not None or cpath.is_file():
        if not cpath.is_file():
            raise FileNotFoundError(f"centers file {cpath} does not exist.")
        try:
            data = json.loads(cpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"centers file {cpath} is not valid JSON: {e}") from e
        if not isinstance(data, (Mapping, list)) or (isinstance(data, list) and not all(isinstance(d, Mapping) for d in data)):
            raise ValueError(
                f"centers file {cpath} must hold {{image: center}} or a list of {{image, center}} objects."
            )
        items = data.items() if isinstance(data, Mapping) else [(d.get("image"), d) for d in data]
        for image, raw in items:
            if not image or not isinstance(image, str):
                raise ValueError(f"{cpath}: an entry has no 'image' path.")
            entry = _case_entry(raw, image, str(cpath))
            cases.append({"image": _abs(image), "case_id": entry.pop("case_id", _case_id(image)), **entry})
    else:
        dl = root / "datalist.json"
        if not dl.is_file():
            raise FileNotFoundError(f"{root} holds neither centers.json nor datalist.json (images + lesion centres).")
        try:
            data = json.loads(dl.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{dl} is not valid JSON: {e}") from e
        entries = data.get(split) if isinstance(data, Mapping) else data
        if not isinstance(entries, list):
            raise ValueError(f"{dl} has no list of entries under {split!r}.")
        for k, e in enumerate(entries):
            image = e.get("image") if isinstance(e, Mapping) else e
            if not isinstance(image, str) or not image:
                raise ValueError(f"{dl}: entry {k} of {split!r} has no 'image' path.")
            center = e.get("center") if isinstance(e, Mapping) else None
            cases.append(
                {
                    "image": _abs(image),
                    "center": center,
                    "world": bool(e.get("world", False)) if isinstance(e, Mapping) else False,
                    "frame": e.get("frame", "RAS") if isinstance(e, Mapping) else "RAS",
                    "case_id": str(e.get("case_id", _case_id(image))) if isinstance(e, Mapping) else _case_id(image),
                }
            )
    if not cases:
        raise ValueError(f"{cpath if cpath.is_file() else root / 'datalist.json'} lists no images.")
    seen: dict[str, int] = {}
    for c in cases:  # unique output folder names
        n = seen.get(c["case_id"], 0)
        seen[c["case_id"]] = n + 1
        if n:
            c["case_id"] = f"{c['case_id']}_{n}"
    return cases


def _safe_case_id(case_id: str) -> str:
    """A case id usable as one folder name (no separators, not ``.``/``..``, not the summary's name)."""
    cid = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in str(case_id)).strip(".") or "case"
    return cid if cid != SUMMARY_NAME else f"{cid}_case"


def infer_cases(
    model: nn.Module,
    cases: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    *,
    spacing: float | Sequence[float],
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    num_samples: int = 16,
    seed: int = 0,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    threshold: PresenceThreshold | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_non_ct: bool = False,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """Run :func:`predict_hypotheses` on many images with one loaded model and write the whole run at once.

    Every case goes to ``<output_dir>/<case_id>/`` (:meth:`Hypotheses.write_set`), plus
    ``<output_dir>/inference_summary.json``; the run is written into a temporary sibling folder and moved onto
    ``output_dir`` at the end (an earlier run there is replaced as a whole, a folder holding anything else is
    refused before any work: :class:`~monai_probunet.io_utils.staged_dir`). A case that fails (bad image, centre
    outside, ...) is recorded with its error and the run goes on.

    Args:
        model: a network with ``sample`` (:func:`load_model`).
        cases: ``{"image", "center" (None = image centre), "world", "frame", "case_id"}`` entries
            (:func:`read_inference_cases`).
        output_dir: the run's folder.
        spacing, roi_size, num_samples, seed, hu_window, device, allow_non_ct: as in :func:`predict_hypotheses`.
        threshold: the fitted presence rule, ``None`` for the fallback rule.
        progress: show a tqdm bar.
        checkpoint: recorded in the summary.

    Returns:
        The summary (``{"cases": [{case_id, image, presence_probability, ambiguous, num_variants, ...} | {case_id,
        image, error}], "num_ok", "num_failed", "ambiguity_rule", ...}``).
    """
    from tqdm import tqdm

    from .io_utils import staged_dir

    if spacing is None:
        raise ValueError(f"spacing is required: {SPACING_HINT}.")
    out = Path(output_dir)
    rows = []
    with staged_dir(out, is_ours=is_inference_run, what="output folder") as tmp:
        used: set[str] = set()
        for case in tqdm(cases, desc="inferring", unit="image", disable=not progress):
            cid = _safe_case_id(case["case_id"])
            k, base = 1, cid
            while cid in used:
                cid, k = f"{base}_{k}", k + 1
            used.add(cid)
            row: dict[str, Any] = {"case_id": cid, "image": str(case["image"])}
            try:
                center = case.get("center")
                image: Any = case["image"]
                if center is None:
                    image, _ = load_ct(case["image"], allow_non_ct=allow_non_ct)
                    center = [(s - 1) / 2 for s in image.shape[1:]]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    hyp = predict_hypotheses(
                        image, center, model, world=bool(case.get("world", False)), frame=case.get("frame", "RAS"),
                        spacing=spacing, roi_size=roi_size, num_samples=num_samples, seed=seed, threshold=threshold,
                        hu_window=hu_window, device=device, allow_non_ct=allow_non_ct,
                    )
                hyp.extra["case_id"] = cid
                (tmp / cid).mkdir()
                hyp.write_set(tmp / cid)
                row.update(
                    presence_probability=hyp.presence_probability,
                    ambiguous=hyp.ambiguous,
                    num_variants=len(hyp.variants),
                    top_variant_frequency=hyp.variants[0].frequency,
                    mean_area_mm2=float(np.mean(hyp.areas_mm2)),
                    output_dir=str(out / cid),
                )
            except (ValueError, FileNotFoundError, RuntimeError) as e:
                logger.error("case %s (%s) failed: %s", cid, case["image"], e)
                row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
        summary = {
            WRITTEN_BY_KEY: WRITTEN_BY,
            "checkpoint": checkpoint,
            "num_samples": num_samples,
            "seed": seed,
            "ambiguity_rule": FALLBACK_RULE if threshold is None else threshold.to_dict(),
            "num_ok": sum("error" not in r for r in rows),
            "num_failed": sum("error" in r for r in rows),
            "cases": rows,
        }
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=1))
    log = logger.error if rows and not summary["num_ok"] else logger.info
    log("inference: %d ok, %d failed -> %s", summary["num_ok"], summary["num_failed"], out)
    return summary


def run_inference(
    network: nn.Module,
    ckpt_path: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    centers: str | os.PathLike | None = None,
    split: str = "test",
    num_samples: int = 16,
    seed: int = 0,
    spacing: float | Sequence[float] | None = None,
    roi_size: int | Sequence[int] = DEFAULT_ROI_SIZE,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    threshold_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    allow_non_ct: bool = False,
) -> dict[str, Any]:
    """Run :func:`predict_hypotheses` on every image of a folder, the model loaded once (bundle id ``inferring``).

    Checks the inputs first (spacing, device, cases, output folder, threshold), then loads ``ckpt_path`` into
    ``network`` (``weights_only=True``); the presence threshold comes from ``threshold_path`` or
    ``presence_threshold.json`` next to the checkpoint (else the fallback rule). Cases come from
    :func:`read_inference_cases`; the run is written by :func:`infer_cases` (all at once, per-case errors
    recorded in ``<output_dir>/inference_summary.json``).

    Returns
    -------
    dict
        The summary.
    """
    from .bundle_utils import ConfigValueError
    from .io_utils import load_network_weights, staged_dir

    try:  # the bundle command prints these as one line (exit status 2): every one is about an option's value
        if spacing is None:
            raise ValueError(f"spacing is required: {SPACING_HINT}.")
        _pair(spacing, "infer_spacing", float)
        dev = check_device(device)
        cases = read_inference_cases(dataset_dir, centers, split)
        staged_dir(output_dir, is_ours=is_inference_run, what="output_dir")  # refuse early, before any work
        thr = _as_threshold(threshold_path) if threshold_path else find_presence_threshold(ckpt_path)
        load_network_weights(network, ckpt_path)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigValueError(str(e)) from e
    network = network.to(dev).eval()
    if thr is None:
        warnings.warn(f"no presence_threshold.json next to {ckpt_path}: {FALLBACK_RULE}.", UserWarning, stacklevel=2)
    return infer_cases(
        network, cases, output_dir, spacing=spacing, roi_size=roi_size, num_samples=num_samples, seed=seed,
        hu_window=hu_window, threshold=thr, device=dev, progress=progress, allow_non_ct=allow_non_ct,
        checkpoint=str(ckpt_path),
    )
