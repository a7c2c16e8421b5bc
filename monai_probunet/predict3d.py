"""3-D lesions: :func:`predict_hypotheses_3d`, S hypotheses of the clicked lesion on every slice it spans.

The 2-D model answers one axial slice at a time (:func:`~monai_probunet.predict.predict_hypotheses`). From the
clicked slice the lesion is followed slice by slice, up and down in turn:

Coherence
    Hypothesis ``s`` is one lesion in 3-D: on every slice it uses the same whitened prior noise ``eps_s``
    (``1 x S x N``, drawn once from ``seed`` exactly as ``model.sample`` draws it for one image), its latent on slice
    ``k`` is ``z_s,k = mu(x_k) + L(x_k) eps_s`` (:class:`SharedNoiseSampler`). A hypothesis that shows no lesion on
    the clicked slice says "no lesion" and stays empty on every slice. (A network without a prior,
    e.g. the baselines, is called with the same seed on every slice.)

Growth and re-centring
    :mod:`~monai_probunet.lesion_growth`: a lesion hypothesis continues on the next slice while its outline
    overlaps its outline on the previous one; a slice belongs to the lesion while enough of them continue; each
    slice is cut around the previous slice's consensus footprint; at most ``max_extent_mm`` of slices.

Each slice runs through the 2-D pieces of :mod:`~monai_probunet.inference_transforms` (``preprocessing``,
``inferer``, ``postprocessing``: those of :func:`~monai_probunet.predict.predict_hypotheses` and the bundle, built
once per volume, :func:`slice_pieces`) on an in-plane window of the slice that holds the model's field around the
centre (its start aligned to the model's grid, so the result equals the 2-D mode on that slice up to voxels at exact
nearest-neighbour ties). Near an in-plane border the window keeps its width by reaching further into the image, and
the model's field beyond the border is padded by the same preprocessing as in 2-D mode: a click anywhere on
the volume is answered (:func:`~monai_probunet.lesion_growth.slice_window`).

Result (:class:`Hypotheses3D`): ``S x *spatial`` hypotheses on the input's grid, the presence-rule label
(:mod:`monai_probunet.presence_label`), per-hypothesis volumes in mm^3 from the 3-D masks (voxel count x the voxel
volume of the input, slice thickness included), the slices and the extent.

A 2-D image is refused (3-D mode needs slices), and so is a DICOM series whose slices are not equally spaced.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch import nn

from .ct_io import (
    DEFAULT_HU_WINDOW,
    DEFAULT_ROI_SIZE,
    MODALITY_KEY,
    SPACING_HINT,
    _affine4,
    _pair,
    _slice_axis,
    load_ct,
    resolve_center,
)
from .dicom_slab import ReadNear
from .hypotheses import FALLBACK_RULE, Hypotheses, _as_threshold, group_variants
from .inference_transforms import (
    HypothesesInferer,
    ModelGridd,
    PresenceSummaryd,
    inference_postprocessing,
    inference_preprocessing,
    run_hypotheses,
)
from .lesion_growth import (
    DEFAULT_MAX_EXTENT_MM,
    GROWTH_FRACTION,
    MIN_PRESENCE,
    grid_step,
    grow_lesion,
    growth_rule,
    max_growth_slices,
    slice_window,
)
from .metrics import PresenceThreshold
from .networks.latent_noise import prior_noise
from .predict import MAX_HYPOTHESES_BYTES, check_sampling_arguments
from .presence_label import LabelDecision, consensus_label, presence_decision

__all__ = [
    "DEFAULT_MAX_EXTENT_MM",
    "GROWTH_FRACTION",
    "MIN_PRESENCE",
    "Hypotheses3D",
    "SharedNoiseSampler",
    "growth_rule",
    "predict_hypotheses_3d",
    "slice_pieces",
]


class SharedNoiseSampler(nn.Module):
    """``sample(image, S)`` of a Probabilistic U-Net with fixed whitened prior noise: the same hypotheses' noise on
    every image.

    Args:
        network: a :class:`~monai_probunet.networks.ProbUNet` (``prior_latents`` and ``decode``).
        eps: ``1 x S x N`` standard-normal noise; hypothesis ``s`` gets ``z_s = mu(image) + L(image) eps_s``.

    Shapes:
        ``sample(image B x 1 x H x W, S)`` -> logits ``B x S x C x H x W``.
    """

    def __init__(self, network: nn.Module, eps: torch.Tensor) -> None:
        super().__init__()
        self.network = network
        self.prior_sampling = getattr(network, "prior_sampling", None)  # how ``eps`` was drawn, for the report
        self.register_buffer("eps", eps, persistent=False)

    def sample(self, image: torch.Tensor, num_samples: int = 16, generator: torch.Generator | None = None):
        """Logits of the S fixed-noise hypotheses (``generator`` is not used: the noise is fixed)."""
        if num_samples != self.eps.shape[1]:
            raise ValueError(f"this sampler holds noise for {self.eps.shape[1]} hypotheses, asked for {num_samples}.")
        return self.network.decode(image, self.network.prior_latents(image, self.eps))


@dataclass
class Hypotheses3D(Hypotheses):
    """:class:`~monai_probunet.hypotheses.Hypotheses` of a lesion followed through the slices of a volume.

    The inherited fields hold: ``labels`` ``S x *spatial`` (every slice of the lesion), ``mean_probability`` and
    ``entropy`` on those slices (0 elsewhere), ``presence_count`` / ``ambiguous`` / ``areas_mm2`` / ``model_input``
    / ``crop_labels`` of the clicked slice (``slice_index``; the presence threshold was fitted on slices; a
    hypothesis is non-empty in 3-D iff it is on the clicked slice), ``volumes_mm3`` per hypothesis from its 3-D mask
    (voxel count x :attr:`voxel_volume_mm3`), ``variants`` grouped by 3-D IoU (``area_mm2`` = the representative's
    area on the clicked slice).

    Attributes:
        slice_indices: The slices of the lesion (ascending), along ``slice_axis``.
        lesion_box: Three slices of the input's grid: the lesion's slices x the union of their in-plane windows. Every
            hypothesis, the maps and the label are zero outside it (``()``: not known, the whole grid).
        per_slice: One record per slice tried: ``slice``, ``center_voxel``, ``presence_count`` (hypotheses with any
            lesion there), ``continuing`` (lesion hypotheses continuing from the previous slice), ``accepted``.
        presence_label: ``*spatial`` uint8: the presence-rule label (:mod:`monai_probunet.presence_label`) of the 3-D
            hypotheses.
        label_shows_lesion: Whether the presence rule shows the lesion.
        label_rule: The presence rule with its numbers.
        latent_noise: ``S x N`` float32 whitened prior noise ``eps_s`` used on every slice (``None`` for a network
            without a prior).
        voxel_volume_mm3: Volume of one voxel of the input (``|det|`` of its affine: in-plane spacing x slice spacing).
        max_extent_mm, min_fraction, min_presence: The growth limits used.
        stop_reasons: ``{"up": ..., "down": ...}``: why the growth stopped in each direction (``up`` = increasing slice
            index).
        reached_max_extent: The growth stopped at ``max_extent_mm`` while the lesion went on.
    """

    slice_indices: tuple[int, ...] = ()
    lesion_box: tuple[slice, ...] = ()
    per_slice: list[dict[str, Any]] = field(default_factory=list)
    presence_label: np.ndarray | None = None
    label_shows_lesion: bool = False
    label_rule: str = ""
    latent_noise: np.ndarray | None = None
    voxel_volume_mm3: float = 0.0
    max_extent_mm: float = DEFAULT_MAX_EXTENT_MM
    min_fraction: float = GROWTH_FRACTION
    min_presence: float = MIN_PRESENCE
    stop_reasons: dict[str, str] = field(default_factory=dict)
    reached_max_extent: bool = False

    @property
    def extent_slices(self) -> int:
        """Number of slices the lesion spans."""
        return len(self.slice_indices)

    @property
    def occupied_box(self) -> tuple[slice, ...]:
        """:attr:`lesion_box`: where a 3-D hypothesis can be non-zero."""
        return tuple(self.lesion_box) or (slice(None),) * len(self.spatial_shape)

    @property
    def slice_thickness_mm(self) -> float:
        """Spacing between slice centres (mm)."""
        return float(np.linalg.norm(np.asarray(self.affine)[:3, self.slice_axis]))

    def to_report(self) -> dict[str, Any]:
        """The 2-D report's keys (clicked-slice presence, areas) plus the 3-D ones: ``mode`` ``"3d"``, ``slices``,
        ``extent_slices``, ``extent_mm``, ``per_slice``, ``growth_rule``, ``stop_reasons``, ``reached_max_extent``,
        ``volumes_mm3`` (3-D masks), ``presence_label`` with its volume, ``latent_noise``."""
        report = super().to_report()
        vox = self.voxel_volume_mm3
        for row, v in zip(report["variants"], self.variants):
            row["volume_mm3"] = float(self.volumes_mm3[v.representative])
            row["area_mm2"] = float(v.area_mm2)
        report.update(
            mode="3d",
            slices=[int(k) for k in self.slice_indices],
            extent_slices=self.extent_slices,
            extent_mm=self.extent_slices * self.slice_thickness_mm,
            per_slice=self.per_slice,
            growth_rule=growth_rule(self.min_fraction, self.min_presence, self.max_extent_mm),
            stop_reasons=dict(self.stop_reasons),
            reached_max_extent=bool(self.reached_max_extent),
            voxel_volume_mm3=float(vox),
            volume_grid="input grid: voxel count x voxel volume (in-plane spacing x slice spacing)",
            area_note="areas_mm2, presence_count and ambiguous are those of the clicked slice (slice_index)",
            latent_noise=None if self.latent_noise is None else np.asarray(self.latent_noise, float).tolist(),
            latent_noise_rule=(
                "hypothesis s uses the whitened prior noise latent_noise[s] on every slice: z = mu + L eps_s"
                if self.latent_noise is not None
                else "network without a latent prior: the same seed on every slice"
            ),
        )
        return report

    def presence_rule_label(self) -> tuple[np.ndarray, LabelDecision]:
        """:attr:`presence_label` and the decision that made it (the rule applied to the 3-D hypotheses)."""
        label = self.presence_label if self.presence_label is not None else np.zeros(self.spatial_shape, np.uint8)
        return np.asarray(label, dtype=np.uint8), LabelDecision(bool(self.label_shows_lesion), self.label_rule)

    def _label_size(self, voxels: int) -> dict[str, float]:
        """``{"volume_mm3": ...}`` of ``voxels`` voxels of the input."""
        return {"volume_mm3": voxels * self.voxel_volume_mm3}


# --------------------------------------------------------------------------------------------- input checks


def _positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {value!r}.") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive number, got {value!r}.")
    return v


def slice_pieces(
    preprocessing: Compose | None,
    inferer: HypothesesInferer | None,
    postprocessing: Compose | None,
    *,
    spacing: tuple[float, float],
    roi_size: tuple[int, int],
    num_samples: int,
    seed: int,
    threshold: PresenceThreshold | None,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
) -> tuple[Compose, HypothesesInferer, Compose]:
    """The 2-D pieces run on every slice of a volume: the given ones, checked against the call, or new ones.

    Args:
        preprocessing, inferer, postprocessing: The pieces (all or none).
        spacing, roi_size, num_samples, seed, threshold, hu_window: The call's settings.

    Returns:
        ``(preprocessing, inferer, postprocessing)``.

    Raises:
        ValueError: Only some pieces given, or pieces built with other settings than the call's.
    """
    given = [p is not None for p in (preprocessing, inferer, postprocessing)]
    if not any(given):
        return (
            # allow_non_ct: the slices are cut from a volume whose HU load_ct has checked
            inference_preprocessing(spacing, roi_size=roi_size, hu_window=hu_window, num_samples=num_samples,
                                    allow_non_ct=True),
            HypothesesInferer(num_samples=num_samples, seed=seed),
            inference_postprocessing(threshold),
        )
    if not all(given):
        raise ValueError("preprocessing, inferer and postprocessing are given together or not at all.")
    grids = [t for t in getattr(preprocessing, "transforms", ()) if isinstance(t, ModelGridd)]
    summaries = [t for t in getattr(postprocessing, "transforms", ()) if isinstance(t, PresenceSummaryd)]
    found = {
        "spacing": (grids[0].spacing if grids else None, spacing),
        "roi_size": (grids[0].roi if grids else None, roi_size),
        "num_samples": (getattr(inferer, "num_samples", None), num_samples),
        "seed": (getattr(inferer, "seed", None), seed),
        "threshold": (summaries[0].threshold if summaries else None, threshold),
    }
    for name, (piece, call) in found.items():
        if (name != "threshold" or summaries) and piece != call:
            raise ValueError(f"the given pieces were built with {name}={piece!r}, this call has {name}={call!r}.")
    return preprocessing, inferer, postprocessing


# --------------------------------------------------------------------------------------------- main entry


def predict_hypotheses_3d(
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
    max_extent_mm: float = DEFAULT_MAX_EXTENT_MM,
    min_fraction: float = GROWTH_FRACTION,
    min_presence: float = MIN_PRESENCE,
    preprocessing: Compose | None = None,
    inferer: HypothesesInferer | None = None,
    postprocessing: Compose | None = None,
    dicom_headers: Sequence[Any] | None = None,
) -> Hypotheses3D:
    """S hypotheses of the lesion at ``center`` on every slice it spans (module docstring: coherence, growth rule).

    Args:
        image: A 3-D CT volume in HU (NIfTI, a DICOM series folder with equally spaced slices, or a channel-first
            ``MetaTensor`` ``1 x H x W x D``). A 2-D image is refused.
        center: The click: 3 voxel coordinates of the loaded array, or world mm with ``world=True``.
        model: As for :func:`~monai_probunet.predict.predict_hypotheses`; a Probabilistic U-Net (``prior_latents``,
            ``decode``, ``latent_dim``) gets the same whitened prior noise on every slice.
        world, frame, spacing, roi_size, num_samples, seed, threshold, hu_window, device, allow_non_ct: As for
            :func:`~monai_probunet.predict.predict_hypotheses` (``spacing`` required).
        max_extent_mm: Largest extent followed along the slice axis (slices x slice thickness), default 40 mm.
        min_fraction: In ``(0, 1]``: a slice belongs to the lesion while at least ``ceil(min_fraction * n0)`` of the
            clicked slice's ``n0`` lesion hypotheses continue on it.
        min_presence: In ``[0, 1]``: ... and at least ``ceil(min_presence * S)`` of all S hypotheses.
        preprocessing, inferer, postprocessing: The 2-D pieces run on every slice
            (:mod:`~monai_probunet.inference_transforms`; the bundle's ids ``preprocessing``, ``inferer`` and
            ``postprocessing``), built once per volume; given together or not at all, and built with this call's
            ``spacing``, ``roi_size``, ``num_samples``, ``seed`` and ``threshold`` (their window is the slices'
            HU window). ``None``: built from the arguments.
        dicom_headers: For a DICOM series folder: its files' headers where the caller has read them
            (:func:`~monai_probunet.ct_io.load_ct`), so that they are not read again.

    Returns:
        Hypotheses3D: ``labels`` ``S x *spatial`` uint8, ``presence_label`` ``*spatial``, ``volumes_mm3`` ``S``, the
            slices.

    Raises:
        ValueError: For a 2-D image, unequal DICOM slice gaps, an image larger than the hypotheses' memory limit, and
            everything :func:`~monai_probunet.predict.predict_hypotheses` refuses.
        FileNotFoundError: If the image path does not exist.
    """
    check_sampling_arguments(num_samples, seed, model)
    if spacing is None:
        raise ValueError(f"spacing is required: {SPACING_HINT}.")
    spacing2 = _pair(spacing, "spacing", float)
    roi2 = _pair(roi_size, "roi_size", int)
    max_extent_mm = _positive(max_extent_mm, "max_extent_mm")
    min_fraction = _positive(min_fraction, "min_fraction")
    if min_fraction > 1:
        raise ValueError(f"min_fraction must lie in (0, 1], got {min_fraction!r}.")
    if isinstance(min_presence, bool) or not isinstance(min_presence, (int, float)) or not 0 <= min_presence <= 1:
        raise ValueError(f"min_presence must lie in [0, 1], got {min_presence!r}.")
    thr = _as_threshold(threshold)
    num_samples, seed = int(num_samples), int(seed)

    near = ReadNear(center, world, frame, mm_each_side=max_extent_mm)  # of a DICOM series: the slices followed
    img, source = load_ct(image, allow_non_ct=allow_non_ct, dicom_headers=dicom_headers, near=near)
    if img.ndim != 4 or img.shape[-1] < 2:  # one slice has no neighbours to follow the lesion into
        what = "a 2-D image" if img.ndim != 4 else "a volume of one slice"
        raise ValueError(
            f"{source}: 3-D mode needs a CT volume (1 x H x W x D, D >= 2); this is {what} of shape "
            f"{tuple(img.shape)}: use 2-D mode."
        )
    spatial = tuple(int(s) for s in img.shape[1:])
    voxel, world_ras = resolve_center(img, center, world=world, frame=frame, source=source)
    affine = _affine4(img).numpy()
    axis = _slice_axis(torch.as_tensor(affine), 3)
    inplane = [a for a in range(3) if a != axis]
    pix = np.linalg.norm(affine[:3, :3], axis=0)
    thickness = float(pix[axis])
    # the memory the result fills: S uint8 hypotheses and two float32 maps on the lesion's box, at most the whole
    # plane x the slices followed (the volume-sized arrays around the box are zeros the system has not allocated)
    most = min(spatial[axis], max_growth_slices(max_extent_mm, thickness))
    need = (num_samples + 8) * spatial[inplane[0]] * spatial[inplane[1]] * most
    if need > MAX_HYPOTHESES_BYTES:
        raise ValueError(
            f"num_samples={num_samples} 3-D hypotheses of {source} over up to {most} slices of "
            f"{spatial[inplane[0]]} x {spatial[inplane[1]]} would need about {need / 2**30:.1f} GiB; at most "
            f"{MAX_HYPOTHESES_BYTES / 2**30:.0f} GiB: draw fewer hypotheses (num_samples; the CLI's --num-samples) "
            "or follow the lesion over fewer mm (max_extent_mm; the CLI's --max-extent-mm)."
        )
    voxel_volume = float(abs(np.linalg.det(affine[:3, :3])))
    field_mm = [r * s for r, s in zip(roi2, spacing2)]
    extent = [pix[a] * spatial[a] for a in inplane]
    if any(e + 1e-6 < f for e, f in zip(extent, field_mm)):
        raise ValueError(
            f"{source}: the image ({extent[0]:.1f} x {extent[1]:.1f} mm in-plane) is smaller than the model's field "
            f"of {field_mm[0]:g} x {field_mm[1]:g} mm; give the whole volume, not a small crop."
        )
    k0 = int(np.clip(np.floor(voxel[axis] + 0.5), 0, spatial[axis] - 1))
    vol = img.as_tensor()[0].permute(inplane[0], inplane[1], axis)  # H x W x D, slices last
    device = torch.device(device)

    # the same whitened prior noise for hypothesis s on every slice (what model.sample draws for one image)
    eps = None
    sampler: nn.Module = model
    if all(hasattr(model, a) for a in ("prior_latents", "decode", "latent_dim")):
        method = getattr(model, "prior_sampling", "iid")
        eps = prior_noise(1, num_samples, int(model.latent_dim), torch.Generator().manual_seed(seed), method=method)
        sampler = SharedNoiseSampler(model, eps.to(device))

    preprocessing, inferer, postprocessing = slice_pieces(
        preprocessing, inferer, postprocessing, spacing=spacing2, roi_size=roi2, num_samples=num_samples, seed=seed,
        threshold=thr, hu_window=hu_window,
    )

    half = [math.ceil(f / 2 / pix[a]) + 2 for f, a in zip(field_mm, inplane)]
    step = [grid_step(pix[a], s) for a, s in zip(inplane, spacing2)]

    def run_slice(k: int, c: Sequence[float]) -> tuple[Hypotheses, tuple[slice, slice]]:
        """Hypotheses of slice ``k`` on a window around in-plane voxel ``c``."""
        win = [slice_window(c[d], spatial[inplane[d]], half[d], step[d]) for d in range(2)]
        arr = vol[win[0], win[1], k].contiguous()
        corner = np.zeros(4)
        corner[3] = 1.0
        corner[inplane[0]], corner[inplane[1]], corner[axis] = win[0].start, win[1].start, k
        aff2 = np.eye(4)
        aff2[:3, 0], aff2[:3, 1], aff2[:3, 2] = affine[:3, inplane[0]], affine[:3, inplane[1]], affine[:3, axis]
        aff2[:3, 3] = (affine @ corner)[:3]
        meta = {"filename_or_obj": source, MODALITY_KEY: "CT"}  # the volume's HU were checked by load_ct
        plane = MetaTensor(arr[None], affine=torch.as_tensor(aff2), meta=meta)
        case = {"image": plane, "center": [c[0] - win[0].start, c[1] - win[1].start], "world": False, "frame": "RAS"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            h = run_hypotheses(case, sampler, preprocessing, inferer, postprocessing, device=device)
        return h, (win[0], win[1])

    grown = grow_lesion(
        run_slice, num_samples=num_samples, plane_shape=(spatial[inplane[0]], spatial[inplane[1]]),
        num_slices=spatial[axis], first_slice=k0, first_center=[float(voxel[inplane[0]]), float(voxel[inplane[1]])],
        thickness=thickness, max_extent_mm=max_extent_mm, min_fraction=min_fraction, min_presence=min_presence,
    )
    h0, alive0, n0 = grown.first, grown.has_lesion, grown.presence_count

    # the lesion's box (its slices and windows: all voxels of every hypothesis lie in it), back in the input's axis
    # order: (inplane0, inplane1, slice) -> spatial; the volume-sized results are zeros around it
    order = np.argsort([inplane[0], inplane[1], axis])
    box = [slice(None)] * 3
    box[axis] = slice(grown.slices[0], grown.slices[-1] + 1)
    for d, a in enumerate(inplane):
        box[a] = grown.bounds[d]
    box = tuple(box)
    sub = np.ascontiguousarray(grown.labels.transpose(0, *(1 + order)))
    labels = np.zeros((num_samples, *spatial), np.uint8)
    labels[(slice(None), *box)] = sub
    mean_prob, entropy = np.zeros(spatial, np.float32), np.zeros(spatial, np.float32)
    mean_prob[box] = grown.mean_probability.transpose(*order)
    entropy[box] = grown.entropy.transpose(*order)

    # variants by 3-D IoU on the box; presence-rule label; volumes
    variants = [
        replace(v, area_mm2=float(h0.areas_mm2[v.representative]), has_lesion=bool(alive0[v.representative]))
        for v in group_variants(torch.from_numpy(sub), voxel_volume)
    ]
    decision = presence_decision(n0, num_samples, thr)
    presence = np.zeros(spatial, np.uint8)
    if decision.show_lesion:
        lesion = [v for v in variants if v.has_lesion]
        presence[box] = consensus_label(sub, fallback=lesion[0].representative if lesion else None)
    volumes = np.count_nonzero(sub.reshape(num_samples, -1), axis=1).astype(np.float64) * voxel_volume
    if thr is None:
        warnings.warn(f"no fitted presence threshold given: {FALLBACK_RULE}.", UserWarning, stacklevel=2)
    return Hypotheses3D(
        labels=labels,
        mean_probability=mean_prob,
        entropy=entropy,
        affine=np.asarray(affine, dtype=np.float64),
        presence_count=n0,
        presence_probability=n0 / num_samples,
        ambiguous=h0.ambiguous,
        ambiguity_rule=h0.ambiguity_rule,
        threshold=thr,
        areas_mm2=h0.areas_mm2,
        volumes_mm3=volumes,
        variants=variants,
        center_voxel=tuple(float(v) for v in voxel),
        center_world_ras=tuple(float(v) for v in world_ras),
        slice_axis=axis,
        slice_index=k0,
        model_input=h0.model_input,
        crop_labels=h0.crop_labels,
        source=source,
        num_samples=num_samples,
        seed=seed,
        spacing=spacing2,
        roi_size=roi2,
        prior_sampling=h0.prior_sampling,
        slice_indices=grown.slices,
        lesion_box=box,
        per_slice=grown.per_slice,
        presence_label=presence,
        label_shows_lesion=bool(decision.show_lesion),
        label_rule=decision.rule,
        latent_noise=None if eps is None else eps[0].numpy().astype(np.float32),
        voxel_volume_mm3=voxel_volume,
        max_extent_mm=max_extent_mm,
        min_fraction=min_fraction,
        min_presence=float(min_presence),
        stop_reasons=grown.stop_reasons,
        reached_max_extent=grown.reached_max_extent,
    )
