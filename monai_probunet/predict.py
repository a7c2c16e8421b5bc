"""Sampling: :func:`predict_hypotheses`, S segmentation hypotheses of the lesion at a centre on the input's own grid.

The steps (load, slice, window, resample, pad, crop, sample, map back with ``Invertd``) and the coordinate
conventions are described in :mod:`monai_probunet.inference`, the package's public face for this function.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    Invertd,
    ScaleIntensityRange,
    Spacingd,
    SpatialCrop,
    SpatialCropd,
    SpatialPadd,
)

from .ct_io import (
    DEFAULT_HU_WINDOW,
    DEFAULT_ROI_SIZE,
    SPACING_HINT,
    _affine4,
    _pair,
    _points,
    _slice_axis,
    load_ct,
    resolve_center,
)
from .hypotheses import FALLBACK_RULE, Hypotheses, _ambiguity, _as_threshold, group_variants
from .metrics import PresenceThreshold

__all__ = ["MAX_HYPOTHESES_BYTES", "predict_hypotheses"]

#: refuse a request whose hypotheses (on the image's grid and the model's) would need more memory than this
MAX_HYPOTHESES_BYTES = 4 * 2**30


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
        :func:`~monai_probunet.model_loading.load_model`; there is no default, a wrong spacing silently rescales every lesion).
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
