"""The result of an inference: :class:`Hypotheses` (S label maps on the input's grid, their summaries, the report
and the NIfTI set on disk), its distinct outlines (:class:`Variant`, :func:`group_variants`) and the lesion-presence
ambiguity rule (the fitted :class:`~monai_probunet.metrics.PresenceThreshold`, else :data:`FALLBACK_RULE`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .metrics import PresenceThreshold, pairwise_iou_distance
from .presence_label import LabelDecision, consensus_label, presence_decision

__all__ = [
    "FALLBACK_RULE",
    "Hypotheses",
    "Variant",
    "group_variants",
    "is_hypotheses_set",
    "is_inference_run",
]

#: hypotheses with IoU >= this are one variant
VARIANT_IOU = 0.9
#: the rule used for the ambiguous flag when no fitted presence threshold is available
FALLBACK_MARGIN = 0.25
FALLBACK_RULE = (
    "fallback 0.5 rule (no fitted presence_threshold.json): ambiguous iff |p - 0.5| <= 0.25, i.e. "
    "0.25 <= p <= 0.75 with p the fraction of hypotheses showing a lesion (neither presence nor absence has a 3:1 "
    "majority)"
)
#: ``report.json`` / ``inference_summary.json`` carry ``{WRITTEN_BY_KEY: WRITTEN_BY}``: an output folder holding it
#: (and nothing else) was written by the inference path and may be replaced by a new run
WRITTEN_BY_KEY = "written_by"
WRITTEN_BY = "monai_probunet.inference"
REPORT_NAME = "report.json"
SUMMARY_NAME = "inference_summary.json"
#: the DICOM SEG of the presence-rule label (DICOM input only: :meth:`Hypotheses.write_set` with ``dicom_source``)
DICOM_SEG_NAME = "seg.dcm"
#: the CLI's picture (``--png``, :mod:`monai_probunet.overview`), written into the set's folder after it
OVERVIEW_NAME = "overview.png"
#: the presence-rule label (:meth:`Hypotheses.presence_rule_label`): what MONAI Label returns and ``seg.dcm`` holds
PRESENCE_LABEL_NAME = "presence_label.nii.gz"
SET_FILES = ("hypotheses.nii.gz", "mean_probability.nii.gz", "entropy.nii.gz", "variant_label.nii.gz", REPORT_NAME,
             PRESENCE_LABEL_NAME, DICOM_SEG_NAME, OVERVIEW_NAME)


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Variant:
    """A group of hypotheses that are the same outline up to IoU >= 0.9 (:func:`group_variants`).

    Attributes:
        members: Indices (into the S hypotheses) of the hypotheses in this group, ascending.
        representative: The member with the smallest summed distance ``1 - IoU`` to the other members (the medoid; ties:
            lowest index); its label map stands for the variant.
        frequency: ``len(members) / S``.
        has_lesion: Whether the representative has any lesion pixel.
        area_mm2: Lesion area of the representative on the model's grid.
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

    Attributes:
        labels: ``S x *spatial`` uint8 label maps (0 = background, 1 = lesion), nearest-neighbour resampled back.
        mean_probability: ``*spatial`` float32 in [0, 1]: mean over the S hypotheses of the softmax lesion probability
            (all foreground classes), linearly resampled back.
        entropy: ``*spatial`` float32 in bits, ``>= 0``: entropy of the mean class distribution over the hypotheses
            (predictive entropy; at most ``log2(C)`` = 1 bit for lesion/background), linearly resampled back.
        affine: ``4 x 4`` float64 voxel -> RAS mm affine of the input (what the saved NIfTI files carry).
        presence_count: Hypotheses (of S) with any lesion pixel.
        presence_probability: ``presence_count / S``.
        ambiguous: Predicted ground-truth ambiguity of lesion presence (:attr:`ambiguity_rule`).
        ambiguity_rule: The rule the flag came from (the fitted threshold, or :data:`FALLBACK_RULE`).
        threshold: The fitted threshold used, ``None`` with the fallback rule.
        areas_mm2: ``S`` float64 lesion areas in mm^2, counted on the model's grid (``spacing`` mm pixels) before
            resampling back.
        volumes_mm3: ``S`` float64 lesion volumes in mm^3 for a 3-D input (area x slice thickness of the input), else
            ``None``.
        variants: Distinct outlines (IoU >= 0.9 groups), most frequent first.
        center_voxel: The centre in voxel coordinates of the input.
        center_world_ras: The centre in RAS millimetres.
        slice_axis, slice_index: For a volume: the spatial axis treated as axial and the slice that was segmented;
            ``None`` for a slice.
        model_input: ``roi x roi`` float32 windowed crop fed to the model.
        crop_labels: ``S x roi x roi`` uint8 hypotheses on the model's grid.
        source: File name (or ``"<MetaTensor>"``) of the input.
        num_samples, seed: S and the sampling seed.
        prior_sampling: how the S latents were drawn (the network's ``prior_sampling``: ``"sobol"`` or ``"iid"``;
            ``None`` for a network without a latent prior).
        spacing: The model's in-plane spacing in mm.
        roi_size: The model's crop size.
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
    prior_sampling: str | None = None
    # the presence-rule label, computed once (a volume's 2-D result: a consensus over S x the whole volume)
    _presence_rule_label: tuple[np.ndarray, LabelDecision] | None = field(default=None, init=False, repr=False,
                                                                         compare=False)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The input's spatial shape."""
        return tuple(self.labels.shape[1:])

    @property
    def occupied_box(self) -> tuple[slice, ...]:
        """The part of the input's grid where a hypothesis can be non-zero: the segmented slice of a volume, else the
        whole grid (a volume's 2-D result leaves every other slice empty; nothing needs to look there)."""
        box = [slice(None)] * len(self.spatial_shape)
        if self.slice_axis is not None and len(box) == 3:
            box[self.slice_axis] = slice(self.slice_index, self.slice_index + 1)
        return tuple(box)

    @property
    def most_frequent_label(self) -> np.ndarray:
        """``*spatial`` uint8: the representative hypothesis of the most frequent variant."""
        return self.labels[self.variants[0].representative]

    def presence_rule_label(self) -> tuple[np.ndarray, LabelDecision]:
        """The presence-rule label (:mod:`monai_probunet.presence_label`): what MONAI Label returns as the label.

        Returns:
            tuple: ``*spatial`` uint8 (0/1): empty when the presence rule says no lesion, else the consensus of the
                lesion-containing hypotheses (fallback: the representative of the most frequent lesion variant);
                and the :class:`~monai_probunet.presence_label.LabelDecision`. Computed once; not to be modified.
        """
        if self._presence_rule_label is None:
            decision = presence_decision(self.presence_count, self.num_samples, self.threshold)
            label = np.zeros(self.spatial_shape, np.uint8)
            if decision.show_lesion:
                lesion = [v for v in self.variants if v.has_lesion]
                box = self.occupied_box
                label[box] = consensus_label(self.labels[(slice(None), *box)],
                                             fallback=lesion[0].representative if lesion else None)
            self._presence_rule_label = (label, decision)
        return self._presence_rule_label

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
            "prior_sampling": self.prior_sampling,
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
            "presence_label": self.presence_label_report(),
            **self.extra,
        }

    def presence_label_report(self) -> dict[str, Any]:
        """The presence-rule label in ``report.json``: ``shows_lesion``, ``name`` (the segment name MONAI Label and
        ``seg.dcm`` give it, e.g. ``no lesion p=0.19 ambiguous``), ``voxels`` (on the input grid), its size and the
        ``rule`` that decided it."""
        from .segment_names import label_segment_name

        label, decision = self.presence_rule_label()
        voxels = int(np.count_nonzero(label))
        return {
            "shows_lesion": bool(decision.show_lesion),
            "name": label_segment_name(self.presence_probability, self.ambiguous, decision.show_lesion),
            "voxels": voxels,
            **self._label_size(voxels),
            "rule": decision.rule,
        }

    def _label_size(self, voxels: int) -> dict[str, float]:
        """``{"area_mm2": ...}`` of ``voxels`` pixels of the segmented slice (the input grid's in-plane pixel)."""
        affine = np.asarray(self.affine, dtype=np.float64)
        axes = [a for a in range(len(self.spatial_shape)) if a != self.slice_axis][:2]
        pixel = float(np.linalg.norm(np.cross(affine[:3, axes[0]], affine[:3, axes[1]])))
        return {"area_mm2": voxels * pixel}

    def save(
        self,
        out_dir: str | os.PathLike,
        dicom_source: str | os.PathLike | None = None,
        seg_hypotheses: bool = False,
        then: Callable[[Path], Any] | None = None,
        dicom_headers: Sequence[Any] | None = None,
    ) -> dict[str, Path]:
        """Write NIfTI files with the input's affine and a JSON report into ``out_dir``, all or nothing.

        The set is written into a temporary sibling folder and moved onto ``out_dir`` when complete, so a failed
        write leaves the previous ``out_dir`` as it was (and no temporary folder). ``out_dir`` may be new, empty,
        or an earlier set written by this method (:func:`is_hypotheses_set`: then it is replaced as a whole);
        anything else is refused with :class:`~monai_probunet.io_utils.OutputFolderError` (a ``ValueError``)
        before anything is written.

        Files:
            ``hypotheses.nii.gz``: uint8, 4-D: ``*spatial x S`` for a volume, ``H x W x 1 x S`` for a slice (hypothesis
                = 4th axis).
            ``mean_probability.nii.gz``, ``entropy.nii.gz``: float32 ``*spatial``.
            ``variant_label.nii.gz``: uint8 ``*spatial``: the most frequent variant's label map.
            ``seg.dcm`` (with ``dicom_source`` only): :meth:`write_dicom_seg`.
            ``report.json``: :meth:`to_report` plus ``files`` (name -> file name), ``written_by`` and, with the SEG,
                ``dicom_seg`` (its UIDs and segment names).

        Args:
            out_dir: The output folder.
            dicom_source: The DICOM series folder (or DICOM file) the input was loaded from: a DICOM SEG of it is
                written too; ``None``: no SEG.
            seg_hypotheses: With ``dicom_source``: the S hypotheses are further segments of the SEG.
            then: Called with the staged folder once the set is in it, to add files of the set (the CLI's
                ``overview.png``), which then arrive with the rest or not at all.
            dicom_headers: With ``dicom_source``: its instances' headers where the caller has read them
                (:func:`~monai_probunet.dicom_series.read_headers`), so that the SEG does not read them again.

        Returns:
            dict: Name -> written path (keys ``hypotheses``, ``mean_probability``, ``entropy``, ``variant_label``,
                ``report``; ``dicom_seg`` with ``dicom_source``).
        """
        from .io_utils import staged_dir

        out = Path(out_dir)
        with staged_dir(out, is_ours=is_hypotheses_set, what="output folder") as tmp:
            names = self.write_set(tmp, dicom_source=dicom_source, seg_hypotheses=seg_hypotheses,
                                   dicom_headers=dicom_headers)
            if then is not None:
                then(tmp)
        return {k: out / v.name for k, v in names.items()}

    def write_dicom_seg(
        self,
        path: str | os.PathLike,
        dicom_source: str | os.PathLike,
        seg_hypotheses: bool = False,
        dicom_headers: Sequence[Any] | None = None,
    ) -> dict[str, Any]:
        """Write a DICOM SEG of the source series (or slice): segment 1 is :meth:`presence_rule_label`, named as the
        MONAI Label app names it (``lesion p=0.88``, :func:`~monai_probunet.segment_names.label_segment_name`);
        with ``seg_hypotheses`` segments 2 .. S + 1 are the S hypotheses (``h3 variant B 4/16``).

        Args:
            path: The ``.dcm`` to write (atomically).
            dicom_source: The DICOM series folder, or the DICOM file of a slice, the input was loaded from (the label
                grid must be that image's: :func:`~monai_probunet.dicom_seg.label_to_frames`).
            seg_hypotheses: Add the hypotheses as segments.
            dicom_headers: The source instances' headers, if read already (else they are read from
                ``dicom_source``).

        Returns:
            dict: ``SeriesInstanceUID``, ``SOPInstanceUID``, ``ReferencedSeriesInstanceUID`` and ``segments`` (names,
                segment number = position + 1).

        Raises:
            DicomSegError: (a ``ValueError``) the source is not one DICOM series, or its geometry is not the label's.
        """
        from .dicom_seg import write_dicom_seg
        from .segment_names import hypothesis_segment_names

        names = [self.presence_label_report()["name"]]
        if seg_hypotheses:
            names += hypothesis_segment_names(self.variants, self.num_samples)
        # L x *spatial 0/1, filled where a layer can be non-zero (zeros elsewhere: not allocated by the system)
        box = self.occupied_box
        layers = np.zeros((len(names), *self.spatial_shape), np.uint8)
        layers[(0, *box)] = self.presence_rule_label()[0][box] > 0
        if seg_hypotheses:
            layers[(slice(1, None), *box)] = self.labels[(slice(None), *box)] > 0
        if layers.ndim == 3:  # a slice: L x H x W x 1
            layers = layers[..., None]
        info = write_dicom_seg(
            path, layers, np.asarray(self.affine, dtype=np.float64), [{"name": n} for n in names], dicom_source,
            occupied=box if len(box) == 3 else None, datasets=dicom_headers,
        )  # the frames of the instances meeting the box only
        return {**info, "segments": names}

    def write_set(
        self,
        folder: str | os.PathLike,
        dicom_source: str | os.PathLike | None = None,
        seg_hypotheses: bool = False,
        dicom_headers: Sequence[Any] | None = None,
    ) -> dict[str, Path]:
        """Write the files of :meth:`save` into an existing, empty ``folder`` (no staging; :meth:`save` stages)."""
        import nibabel as nib

        out = Path(folder)
        affine = np.asarray(self.affine, dtype=np.float64)
        stack = np.moveaxis(self.labels, 0, -1)  # *spatial x S
        if self.labels.ndim == 3:  # a slice: H x W x 1 x S, so that axis 4 holds the hypotheses
            stack = stack[:, :, None, :]
        arrays = {
            "hypotheses": (stack, np.uint8),
            "mean_probability": (self.mean_probability, np.float32),
            "entropy": (self.entropy, np.float32),
            "variant_label": (self.most_frequent_label, np.uint8),
            "presence_label": (self.presence_rule_label()[0], np.uint8),
        }
        paths: dict[str, Path] = {}
        box = self.occupied_box
        for name, (arr, dtype) in arrays.items():
            img = nib.Nifti1Image(_nifti_ordered(arr, dtype, box), affine)
            img.header.set_xyzt_units("mm")
            paths[name] = out / f"{name}.nii.gz"
            nib.save(img, str(paths[name]))
        report = self.to_report()
        if dicom_source is not None:
            paths["dicom_seg"] = out / DICOM_SEG_NAME
            report["dicom_seg"] = self.write_dicom_seg(paths["dicom_seg"], dicom_source, seg_hypotheses,
                                                       dicom_headers)
        report["files"] = {k: p.name for k, p in paths.items()}
        report[WRITTEN_BY_KEY] = WRITTEN_BY
        paths["report"] = out / REPORT_NAME
        paths["report"].write_text(json.dumps(report, indent=1))
        return paths


def _nifti_ordered(arr: np.ndarray, dtype: type, within: tuple[slice, ...] = ()) -> np.ndarray:
    """``arr`` as ``dtype`` in the order NIfTI stores voxels (the first axis fastest: Fortran order), so that nibabel
    writes it without a strided copy of its own, copied by the box of its non-zero voxels (the rest of a 3-D result
    on a whole CT is empty; docs/benchmarks.md: the measurement), looked for ``within`` the leading axes' slices
    given (:attr:`Hypotheses.occupied_box`; everything outside is zero)."""
    part = arr[within]
    occupied = part.any(axis=-1) if arr.ndim == 4 else part != 0  # a stack: any hypothesis (its last axis)
    box = []
    for axis in range(occupied.ndim):
        hit = np.flatnonzero(occupied.any(axis=tuple(a for a in range(occupied.ndim) if a != axis)))
        start = (within[axis].start or 0) if axis < len(within) else 0
        box.append(slice(start + hit[0], start + hit[-1] + 1) if hit.size else slice(0, 0))
    box += [slice(None)] * (arr.ndim - occupied.ndim)
    out = np.zeros(arr.shape, dtype, order="F")
    out[tuple(box)] = arr[tuple(box)]
    return out


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
    """True iff ``folder`` holds a run written by :func:`~monai_probunet.batch_inference.infer_cases`
    (``inference_summary.json`` with the marker plus case folders that are :func:`is_hypotheses_set`) and nothing else
    (safe to replace)."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink() or not _marked(folder / SUMMARY_NAME):
        return False
    return all(p.name == SUMMARY_NAME or is_hypotheses_set(p) for p in folder.iterdir())

# --------------------------------------------------------------------------------------------- variants


def group_variants(labels: torch.Tensor, pixel_area_mm2: float, iou: float = VARIANT_IOU) -> list[Variant]:
    """Group hypotheses whose pairwise IoU is ``>= iou`` into variants, most frequent first.

    Leader clustering in hypothesis order over ``d = 1 - IoU`` from :func:`pairwise_iou_distance` (lesion class,
    empty vs empty = IoU 1): hypothesis ``i`` joins the first existing group whose first member is within
    ``1 - iou`` of it, else it opens a new group. Groups are ordered by size (descending), then by their first
    member.

    Args:
        labels: ``S x *spatial`` label maps.
        pixel_area_mm2: Area of one pixel (for ``Variant.area_mm2``).
        iou: Grouping threshold.

    Returns:
        list of Variant: the groups, most frequent first.
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


# --------------------------------------------------------------------------------------------- presence rule


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
