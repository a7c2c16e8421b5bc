"""Following a clicked lesion through the slices of a volume: :func:`grow_lesion` (the growth rule) and
:func:`slice_window` (the in-plane window each slice is cut to).

The 2-D hypotheses of one slice come from a slice runner (``run_slice(k, centre)``: the S hypotheses of slice ``k``
on an in-plane window around ``centre``; :func:`~monai_probunet.predict3d.predict_hypotheses_3d` gives it the 2-D
pieces of :mod:`~monai_probunet.inference_transforms`). From the clicked slice the lesion is followed slice by
slice, up and down in turn:

Growth rule
    On each new slice a lesion-containing hypothesis continues if its outline there overlaps its own outline on the
    previous slice (8-connected components that do not overlap it are dropped); otherwise it ends and stays empty
    further out. The slice belongs to the lesion while at least ``ceil(min_fraction * n0)`` hypotheses continue
    (``n0``: lesion-containing hypotheses on the clicked slice; ``min_fraction`` 0.5 by default, at least 1);
    the first slice below that ends the growth in that direction and is left empty. A slice also needs at least
    ``ceil(min_presence * S)`` continuing hypotheses (``min_presence`` 0.25, the lower end of the presence rule's
    ambiguous band): a lesion shown by fewer hypotheses on the clicked slice is not followed (one hypothesis that
    sees a lesion everywhere would otherwise run through the whole volume). Growth also stops at the image
    border and when the lesion's extent (slices x slice thickness) would exceed ``max_extent_mm`` (40 mm by default;
    ``reached_max_extent`` then says the lesion may go on).

Re-centring
    Each new slice is cut around the centroid of the previous slice's consensus footprint (voxels marked by more
    than half of the continuing hypotheses; their union if no voxel has a majority).

The slices are sequential (each is centred on the previous one's result), so they are not batched. The rule works
on numpy arrays (scipy for the connected components); the result holds the hypotheses on the lesion's box only (the
union of its slices' windows x its slices, the slices last), so its memory follows the lesion, not the volume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .hypotheses import Hypotheses

__all__ = [
    "DEFAULT_MAX_EXTENT_MM",
    "GROWTH_FRACTION",
    "MIN_PRESENCE",
    "Growth",
    "grid_step",
    "grow_lesion",
    "growth_rule",
    "max_growth_slices",
    "slice_window",
]

#: default largest lesion extent along the slice axis followed from a click
DEFAULT_MAX_EXTENT_MM = 40.0
#: a slice belongs to the lesion while at least this fraction of the clicked slice's lesion hypotheses continue
GROWTH_FRACTION = 0.5
#: ... and at least this fraction of all S hypotheses (the lower end of the fallback ambiguous band)
MIN_PRESENCE = 0.25

#: ``run_slice(k, centre)`` -> (the S hypotheses of slice ``k`` on a window around the in-plane voxel ``centre``, the
#: window as two in-plane slices of the volume's grid); ``labels`` etc. of the hypotheses are on the window's grid.
SliceRunner = Callable[[int, Sequence[float]], tuple[Hypotheses, tuple[slice, slice]]]


def growth_rule(min_fraction: float, min_presence: float, max_extent_mm: float) -> str:
    """The growth rule in words (for the report).

    Args:
        min_fraction, min_presence, max_extent_mm: The growth limits (:func:`grow_lesion`).

    Returns:
        One sentence stating the rule with its numbers.
    """
    return (
        "from the clicked slice, up and down in turn: a lesion hypothesis continues on the next slice if its outline "
        "there overlaps its own outline on the previous slice (non-overlapping components dropped); the slice belongs "
        f"to the lesion while at least ceil({min_fraction:g} x n0) of the n0 lesion hypotheses of the clicked slice "
        f"and at least ceil({min_presence:g} x S) of all S hypotheses continue, the first slice below that ends the "
        "growth in that direction; at most "
        f"{max_extent_mm:g} mm of slices in all; each slice centred on the previous slice's consensus footprint"
    )


def max_growth_slices(max_extent_mm: float, thickness: float) -> int:
    """The most slices a lesion is followed over: ``max_extent_mm`` of slices ``thickness`` mm apart (at least 1)."""
    return max(1, math.floor(max_extent_mm / thickness + 1e-6))


def grid_step(pix: float, spacing: float) -> int:
    """The window starts' step: the smallest ``q <= 64`` with ``q * pix`` a whole number of model pixels.

    A window that starts at a multiple of ``q`` voxels has the whole slice's model grid (1 if there is none).

    Args:
        pix: The volume's in-plane voxel spacing along the axis (mm).
        spacing: The model's pixel spacing along the axis (mm).

    Returns:
        ``q``.
    """
    for q in range(1, 65):
        r = q * pix / spacing
        if abs(r - round(r)) < 1e-4 * max(1.0, r):
            return q
    return 1


def slice_window(c: float, n: int, half: int, step: int) -> slice:
    """The in-plane window ``[lo, hi)`` of one axis that a slice is cut to around voxel ``c``.

    It spans ``half`` voxels either side of ``c`` (the model's field and a margin); ``lo`` is a multiple of ``step``
    (:func:`grid_step`), so the window's model grid is the whole slice's. Near a border the window keeps its full
    width (``2 * half + 1`` voxels, or the whole axis if shorter) by reaching further into the image: it then holds
    the model's field wherever that overlaps the image, and
    :class:`~monai_probunet.inference_transforms.ModelGridd` pads the part beyond the border, as it pads the whole
    slice in 2-D mode.

    Args:
        c: The centre (voxel coordinate along the axis, within half a voxel of the image).
        n: The axis' length in voxels.
        half: Voxels wanted on either side of ``c``.
        step: Window starts are multiples of it.

    Returns:
        The window, ``0 <= lo < hi <= n``.
    """
    width = min(n, 2 * half + 1)
    lo = max(0, math.floor(c) - half)
    lo -= lo % step
    hi = min(n, math.ceil(c) + half + 1)
    if hi - lo < width:  # cut by a border (an uncut window is at least this wide)
        if lo == 0:
            hi = width
        else:
            lo = n - width
            lo -= lo % step
    return slice(lo, hi)


@dataclass
class Growth:
    """The lesion followed through the slices, on the volume's in-plane grid with the slices last.

    Attributes:
        labels: ``S x h x w x d`` uint8 on the lesion's box (:attr:`bounds` in-plane x :attr:`slices`): hypothesis
            ``s`` on every slice of the lesion (the continuing components beyond the clicked slice), 0 elsewhere.
            Outside the box every hypothesis is empty.
        mean_probability: ``h x w x d`` float32 on the box: the slices' mean foreground probability on their
            windows, 0 elsewhere.
        entropy: ``h x w x d`` float32: likewise, the entropy in bits.
        first: The clicked slice's 2-D hypotheses (on its window).
        has_lesion: ``S`` bool: the hypotheses with a lesion on the clicked slice (``n0`` of them).
        slices: The lesion's slices, ascending and consecutive (the box's ``d``).
        bounds: Two in-plane slices of the volume's grid: the union of the lesion slices' windows (the box's ``h``
            and ``w``).
        per_slice: One record per slice tried: ``slice``, ``center_voxel``, ``presence_count``, ``continuing``,
            ``accepted``.
        stop_reasons: ``{"up": ..., "down": ...}``: why the growth stopped in each direction (``up`` = increasing
            slice index).
        reached_max_extent: The growth stopped at the extent limit while the lesion went on.
    """

    labels: np.ndarray
    mean_probability: np.ndarray
    entropy: np.ndarray
    first: Hypotheses
    has_lesion: np.ndarray
    slices: tuple[int, ...]
    bounds: tuple[slice, slice]
    per_slice: list[dict[str, Any]]
    stop_reasons: dict[str, str]
    reached_max_extent: bool

    @property
    def presence_count(self) -> int:
        """``n0``: hypotheses with a lesion on the clicked slice."""
        return int(self.has_lesion.sum())


def grow_lesion(
    run_slice: SliceRunner,
    *,
    num_samples: int,
    plane_shape: tuple[int, int],
    num_slices: int,
    first_slice: int,
    first_center: Sequence[float],
    thickness: float,
    max_extent_mm: float = DEFAULT_MAX_EXTENT_MM,
    min_fraction: float = GROWTH_FRACTION,
    min_presence: float = MIN_PRESENCE,
) -> Growth:
    """Follow the lesion clicked on slice ``first_slice`` at ``first_center`` up and down (module docstring: rule).

    Args:
        run_slice: The slice runner: ``run_slice(k, centre)`` -> (hypotheses of slice ``k`` on its window, the window).
        num_samples: S.
        plane_shape: ``(H, W)``: the volume's in-plane shape.
        num_slices: ``D``: the number of slices.
        first_slice: The clicked slice ``k0``.
        first_center: The click's in-plane voxel coordinates.
        thickness: The slice spacing in mm.
        max_extent_mm: Largest extent followed (slices x ``thickness``).
        min_fraction: A slice belongs to the lesion while at least ``ceil(min_fraction * n0)`` hypotheses continue.
        min_presence: ... and at least ``ceil(min_presence * S)``.

    Returns:
        Growth: the hypotheses on the lesion's box ``S x h x w x d`` and the slices, windows and reasons of the growth.
    """
    from scipy import ndimage

    hw = tuple(int(n) for n in plane_shape)
    placed: dict[int, tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray]] = {}  # slice -> its window

    def place(k: int, h: Hypotheses, win: tuple[slice, slice], keep: np.ndarray) -> None:
        placed[k] = (win, h.labels * keep, h.mean_probability, h.entropy)

    k0 = int(first_slice)
    c0 = [float(v) for v in first_center]
    h0, win0 = run_slice(k0, c0)
    masks0 = h0.labels > 0
    alive0 = masks0.reshape(num_samples, -1).any(axis=1)
    n0 = int(alive0.sum())
    place(k0, h0, win0, np.ones_like(masks0))
    per_slice = [{"slice": k0, "center_voxel": c0, "presence_count": n0, "continuing": n0, "accepted": True}]
    accepted = [k0]
    need_continuing = max(1, math.ceil(min_fraction * n0 - 1e-9), math.ceil(min_presence * num_samples - 1e-9))
    max_slices = max_growth_slices(max_extent_mm, thickness)
    stop: dict[str, str] = {}
    reached_max = False
    if n0 < need_continuing:
        why = f"{n0} of {num_samples} hypotheses show a lesion on the clicked slice (< {need_continuing}): not followed"
        stop = {"up": why, "down": why}
    else:
        full0 = np.zeros((num_samples, *hw), bool)
        full0[:, win0[0], win0[1]] = masks0
        state = {d: {"k": k0, "prev": full0, "active": True} for d in (1, -1)}
        eight = np.ones((3, 3), bool)
        while any(s["active"] for s in state.values()):
            for d, name in ((1, "up"), (-1, "down")):
                s = state[d]
                if not s["active"]:
                    continue
                if len(accepted) >= max_slices:
                    s["active"] = False
                    stop[name] = f"maximum extent {max_extent_mm:g} mm ({max_slices} slices) reached"
                    reached_max = True
                    continue
                k = s["k"] + d
                if not 0 <= k < num_slices:
                    s["active"] = False
                    stop[name] = "image border"
                    continue
                prev = s["prev"]
                alive_prev = prev.reshape(num_samples, -1).any(axis=1)
                votes = prev[alive_prev].sum(axis=0)
                fp = 2 * votes > int(alive_prev.sum())
                if not fp.any():
                    fp = votes > 0
                c = [float(v) for v in np.argwhere(fp).mean(axis=0)]
                h, win = run_slice(k, c)
                masks = h.labels > 0  # S x window (outside the window every hypothesis is empty)
                prev_win = prev[:, win[0], win[1]]
                kept_win = np.zeros_like(masks)
                for i in np.flatnonzero(alive_prev):
                    if not (masks[i] & prev_win[i]).any():
                        continue
                    comp, _ = ndimage.label(masks[i], structure=eight)
                    ids = np.unique(comp[masks[i] & prev_win[i]])
                    kept_win[i] = np.isin(comp, ids[ids > 0])
                kept = np.zeros((num_samples, *hw), bool)
                kept[:, win[0], win[1]] = kept_win
                continuing = int(kept.reshape(num_samples, -1).any(axis=1).sum())
                ok = continuing >= need_continuing
                per_slice.append({"slice": k, "center_voxel": c, "presence_count": int(h.presence_count),
                                  "continuing": continuing, "accepted": ok})
                if not ok:
                    s["active"] = False
                    stop[name] = (f"slice {k}: {continuing} of the {n0} lesion hypotheses continue "
                                  f"(< {need_continuing})")
                    continue
                place(k, h, win, kept_win)
                accepted.append(k)
                s["k"], s["prev"] = k, kept

    # the lesion's box: the union of its slices' windows x its (consecutive) slices
    slices = tuple(sorted(accepted))
    bounds = tuple(slice(min(w[d].start for w, *_ in placed.values()), max(w[d].stop for w, *_ in placed.values()))
                   for d in range(2))
    shape = (bounds[0].stop - bounds[0].start, bounds[1].stop - bounds[1].start, slices[-1] - slices[0] + 1)
    labels = np.zeros((num_samples, *shape), np.uint8)
    mean_prob = np.zeros(shape, np.float32)
    entropy = np.zeros_like(mean_prob)
    for k, (win, lab, mp, en) in placed.items():
        r, c = (slice(win[d].start - bounds[d].start, win[d].stop - bounds[d].start) for d in range(2))
        labels[:, r, c, k - slices[0]] = lab
        mean_prob[r, c, k - slices[0]] = mp
        entropy[r, c, k - slices[0]] = en
    return Growth(
        labels=labels,
        mean_probability=mean_prob,
        entropy=entropy,
        first=h0,
        has_lesion=alive0,
        slices=slices,
        bounds=bounds,
        per_slice=per_slice,
        stop_reasons=stop,
        reached_max_extent=reached_max,
    )
