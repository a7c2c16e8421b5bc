"""The inference CLI's picture (``--png``): the clicked slice around the centre with the presence-rule label and every
hypothesis outlined, in radiological orientation (the patient's right on the image's left, anterior up); of a 3-D
result also the label through its slices. :func:`result_overview` draws it from a result's ``report.json``, its
hypotheses and its label, as written (:meth:`~monai_probunet.hypotheses.Hypotheses.write_set`)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "MAX_SLICE_PANELS",
    "display_orientation",
    "hypotheses_overview",
    "label_slices",
    "overview_title",
    "result_overview",
    "shown_point",
    "spanned_slices",
]

#: the side of the shown square around the centre, in mm
FIELD_MM = 64.0

#: at most this many slices of a 3-D label in the picture's bottom row
MAX_SLICE_PANELS = 12


def spanned_slices(label: np.ndarray, axis: int) -> np.ndarray:
    """The indices along ``axis`` of the slices where ``label`` (``*spatial``) has any voxel, ascending."""
    return np.flatnonzero(np.any(label, axis=tuple(a for a in range(label.ndim) if a != axis)))


def label_slices(label: np.ndarray, axis: int, max_panels: int = MAX_SLICE_PANELS) -> list[int]:
    """The slices to show of a 3-D label: those it spans and one beyond each end (within the volume), evenly
    thinned to ``max_panels`` keeping both ends.

    Args:
        label: ``*spatial`` (3-D) 0/1 label.
        axis: The slice axis.
        max_panels: The most slices returned.

    Returns:
        list: Ascending slice indices; empty for an empty label.
    """
    spanned = spanned_slices(label, axis)
    if spanned.size == 0:
        return []
    shown = np.arange(max(0, spanned[0] - 1), min(label.shape[axis], spanned[-1] + 2))
    if shown.size > max_panels:
        shown = shown[np.unique(np.round(np.linspace(0, shown.size - 1, max_panels)).astype(int))]
    return [int(k) for k in shown]


def display_orientation(directions: np.ndarray) -> tuple[bool, bool, bool]:
    """How to show a slice whose two array axes point along ``directions`` (``3 x 2``: their RAS unit vectors).

    Returns:
        tuple: ``(transpose, flip_rows, flip_cols)`` for an array ``A[a0, a1]``: with ``transpose`` the shown image is
        ``A.T`` (rows along axis 1), then its rows and columns are reversed as flagged, so that the shown columns run
        from the patient's right to left (RAS x decreasing) and the rows from anterior to posterior (y decreasing).
    """
    d = np.asarray(directions, dtype=np.float64)
    transpose = abs(d[0, 0]) >= abs(d[0, 1])  # axis 0 along x: shown horizontally, i.e. as columns of A.T
    col_axis, row_axis = (0, 1) if transpose else (1, 0)
    return transpose, bool(d[1, row_axis] > 0), bool(d[0, col_axis] > 0)


def _shown(array: np.ndarray, orientation: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, flip_rows, flip_cols = orientation
    a = array.T if transpose else array
    return a[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def pixel_aspect(spacing: tuple[float, float], orientation: tuple[bool, bool, bool]) -> float:
    """A shown pixel's height over its width (matplotlib's ``aspect``) for pixels of ``spacing`` mm along the two
    array axes: the shown rows run along axis 1 when :func:`_shown` transposes, else along axis 0."""
    return float(spacing[1] / spacing[0]) if orientation[0] else float(spacing[0] / spacing[1])


def shown_point(
    point: tuple[float, float], shape: tuple[int, int], orientation: tuple[bool, bool, bool]
) -> tuple[float, float]:
    """Where the array position ``point`` (``(a0, a1)`` in an ``A0 x A1`` array) lies in :func:`_shown`'s picture.

    Returns:
        tuple: ``(x, y)``: the shown column and row, as matplotlib's ``imshow`` places them.
    """
    transpose, flip_rows, flip_cols = orientation
    (row, col), (rows, cols) = (point[::-1], shape[::-1]) if transpose else (point, shape)
    return (cols - 1 - col if flip_cols else col), (rows - 1 - row if flip_rows else row)


def hypotheses_overview(
    image: np.ndarray,
    labels: np.ndarray,
    label: np.ndarray,
    center: tuple[float, float],
    directions: np.ndarray,
    spacing: tuple[float, float],
    path: str | os.PathLike,
    title: str,
    hu_window: tuple[float, float] = (-1000.0, 400.0),
    slices: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
) -> Path:
    """Write the overview PNG: the slice around the centre (``FIELD_MM`` square) with the presence-rule label and the
    centre marked, then one small panel per hypothesis; written to a temporary file beside ``path`` and moved onto
    it.

    Args:
        image: ``A0 x A1`` HU slice on the input grid.
        labels: ``S x A0 x A1`` 0/1 hypotheses.
        label: ``A0 x A1`` 0/1 presence-rule label.
        center: The centre's ``(a0, a1)`` array indices.
        directions: ``3 x 2`` RAS directions of the two array axes (:func:`display_orientation`).
        spacing: The pixel size in mm along the two array axes.
        path: The PNG.
        title: The figure's title (e.g. the presence probability).
        hu_window: The grey-level window.
        slices: A bottom row of ``(name, image, label)`` panels (``A0 x A1`` each, the same box): a 3-D label through
            its slices.

    Returns:
        Path: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    half = [max(4, math.ceil(FIELD_MM / 2 / s)) for s in spacing]
    box = tuple(slice(max(0, round(c) - h), round(c) + h + 1) for c, h in zip(center, half))
    orientation = display_orientation(directions)
    aspect = pixel_aspect(spacing, orientation)

    def show(ax, outline: np.ndarray, colour: str, picture: np.ndarray = image) -> None:
        ax.imshow(_shown(picture[box], orientation), cmap="gray", vmin=hu_window[0], vmax=hu_window[1], aspect=aspect)
        if outline[box].any():
            ax.contour(_shown(outline[box].astype(np.float32), orientation), levels=[0.5], colors=colour,
                       linewidths=1.0)
        ax.set_xticks([])
        ax.set_yticks([])

    num = labels.shape[0]
    cols = math.ceil(math.sqrt(num))
    rows = math.ceil(num / cols)
    height = max(4.0, 1.4 * rows)
    fig = plt.figure(figsize=(4 + 1.4 * cols, height + (1.8 if slices else 0.0)), layout="constrained")
    top = fig
    if slices:
        top, bottom = fig.subfigures(2, 1, height_ratios=[height, 1.8])
        for ax, (name, slice_image, slice_label) in zip(np.atleast_1d(bottom.subplots(1, len(slices))), slices):
            show(ax, slice_label, "yellow", slice_image)
            ax.set_title(name, fontsize=6)
        bottom.suptitle("the label through its slices (hypotheses showing a lesion on each)", fontsize=8)
    grid = top.add_gridspec(rows, cols + 3)
    main = top.add_subplot(grid[:, :3])
    show(main, label, "yellow")
    x, y = shown_point(tuple(c - b.start for c, b in zip(center, box)), image[box].shape, orientation)
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):  # a cross with a gap: the outline under it stays visible
        main.plot([x + 3 * dx, x + 8 * dx], [y + 3 * dy, y + 8 * dy], color="cyan", linewidth=1.2)
    main.set_title("label (yellow), centre (+); the patient's right on the left", fontsize=8)
    for s in range(num):
        ax = top.add_subplot(grid[s // cols, 3 + s % cols])
        show(ax, labels[s], "orange")
        ax.set_title(f"h{s}", fontsize=6)  # as the report's members and the SEG's segment names count
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def overview_title(report: Mapping, label: np.ndarray) -> str:
    """The picture's title: the source, the label's segment name (as in ``seg.dcm`` and MONAI Label) and the count,
    e.g. ``CT_small.dcm: no lesion p=0.19 ambiguous (3 of 16 hypotheses show a lesion)``; of a 3-D result also the
    clicked slice and the label's volume and slices.

    Args:
        report: The result's ``report.json``.
        label: ``*spatial`` the presence-rule label.
    """
    source, name = Path(str(report["source"])).name, report["presence_label"]["name"]
    counts = f"{report['presence_count']} of {report['num_samples']} hypotheses show a lesion"
    if report.get("mode") != "3d":
        return f"{source}: {name} ({counts})"
    title = f"{source}: {name} ({counts} on the clicked slice {report['slice_index']})"
    spanned = spanned_slices(label, report["slice_axis"])
    if spanned.size:
        title += f"; the label {report['presence_label']['volume_mm3']:.0f} mm^3 on slices {spanned[0]}-{spanned[-1]}"
    return title


def result_overview(
    image: np.ndarray,
    report: Mapping,
    labels: np.ndarray,
    label: np.ndarray,
    path: str | os.PathLike,
    hu_window: tuple[float, float] = (-1000.0, 400.0),
) -> Path:
    """:func:`hypotheses_overview` of one inference result: the clicked slice of ``image`` (of a volume:
    ``slice_index`` along ``slice_axis``) and, for a 3-D result, the label through its slices.

    Args:
        image: ``*spatial`` HU, the input the result was drawn on.
        report: The result's ``report.json`` (``affine_ras``, ``center_voxel``, ``slice_axis``, ``slice_index``,
            ``presence_label``, ``per_slice`` in 3-D, ...).
        labels: ``S x *spatial`` 0/1 hypotheses.
        label: ``*spatial`` 0/1 presence-rule label.
        path: The PNG.
        hu_window: The grey-level window.

    Returns:
        Path: ``path``.
    """
    from monai.data.utils import to_affine_nd

    keep, slices, array, title = [0, 1], [], image, overview_title(report, label)
    if image.ndim == 3:
        axis, k = report["slice_axis"], report["slice_index"]
        if report.get("mode") == "3d":
            shown = {r["slice"]: r["presence_count"] for r in report["per_slice"]}
            for j in label_slices(label, axis):
                name = f"slice {j}{' (clicked)' if j == k else ''}"
                name += f": {shown[j]}/{report['num_samples']}" if j in shown else ""
                slices.append((name, np.take(image, j, axis), np.take(label, j, axis)))
        array, labels, label = np.take(image, k, axis), np.take(labels, k, axis + 1), np.take(label, k, axis)
        keep = [a for a in range(3) if a != axis]
    columns = np.asarray(to_affine_nd(3, np.asarray(report["affine_ras"], dtype=np.float64)))[:3, keep]
    spacing = np.linalg.norm(columns, axis=0)
    center = tuple(float(report["center_voxel"][a]) for a in keep)
    return hypotheses_overview(array, labels, label, center, columns / spacing, tuple(float(v) for v in spacing),
                               path, title, tuple(hu_window), slices)

