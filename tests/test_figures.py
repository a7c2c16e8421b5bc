"""The figures are readable: legends beside the data, row titles inside their rows, one colour map for masks,
integer ticks for counts, titles that say what is plotted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_probunet import visualize
from monai_probunet.metrics.calibration import ModeCalibration, PixelMarginals

CASE_IDS = ["LIDC-IDRI-0035_s0046_n00_k114", "LIDC-IDRI-0129_s0102_n01_k007", "LIDC-IDRI-0871_s0210_n00_k023"]


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save: each written by the real ``save_figure`` (a PNG of the figure's size at
    its dpi, the figure closed), then drawn again and kept for the layout checks."""
    from PIL import Image

    kept = []
    save = visualize.save_figure

    def save_and_keep(fig, path, dpi=120):
        written = save(fig, path, dpi)
        assert not visualize.plt.fignum_exists(fig.number)  # closed: no figure piles up over an evaluation
        with Image.open(written) as png:
            assert png.size == tuple(round(v * dpi) for v in fig.get_size_inches())
        fig.canvas.draw()
        kept.append(fig)
        return written

    monkeypatch.setattr(visualize, "save_figure", save_and_keep)
    return kept


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _inside(inner, outer, tol: float = 1.0) -> bool:
    return (inner.x0 >= outer.x0 - tol and inner.y0 >= outer.y0 - tol and inner.x1 <= outer.x1 + tol
            and inner.y1 <= outer.y1 + tol)  # fmt: skip


def _mode_calibration(frequencies) -> ModeCalibration:
    counts = np.round(np.asarray(frequencies) * 160)
    return ModeCalibration(patterns=[(i,) for i in range(5)], true_probs=np.array([0.109, 0.05, 0.02, 0.3, 0.2]),
                           counts=counts, exact_counts=counts, num_images=10, num_exact_images=10,
                           num_samples=16)  # fmt: skip


def test_mode_calibration_legend_is_outside_the_axes(figures, tmp_path):
    collapsed = _mode_calibration([0.585, 0.0, 0.0, 0.3, 0.1])  # a point high on the left, where the legend was
    visualize.mode_calibration_plot({"probunet": collapsed, "oracle": _mode_calibration([0.1] * 5)}, tmp_path / "m.png")
    (fig,) = figures
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert not _overlap(legend, ax.get_window_extent())
    assert _inside(legend, fig.bbox)  # and not cut off


def test_pixel_marginals_legend_is_outside_the_axes(figures, tmp_path):
    pm = PixelMarginals(names=["sidewalk", "person"], target_names=["sidewalk 2", "person 2"],
                        flip_probs=np.array([8 / 17, 7 / 17]), counts=np.array([[2, 7, 1, 10], [9, 1, 0, 10]]))
    visualize.pixel_marginals_plot(pm, tmp_path / "p.png")
    (fig,) = figures
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert not _overlap(legend, ax.get_window_extent())
    assert _inside(legend, fig.bbox)


def test_sample_grid_row_titles_fit_their_rows_and_masks_share_a_colour_map():
    images, graders = torch.rand(3, 1, 16, 16), torch.randint(0, 2, (3, 4, 16, 16))
    fig = visualize.sample_grid(images, graders, torch.randint(0, 2, (3, 16, 16, 16)), titles=CASE_IDS)
    try:
        fig.canvas.draw()
        axes = np.array(fig.axes).reshape(3, -1)
        labels = [axes[r, 0].yaxis.label for r in range(3)]
        boxes = [label.get_window_extent() for label in labels]
        for r, box in enumerate(boxes):
            assert _inside(box, fig.bbox), (CASE_IDS[r], box, fig.bbox)
            row = axes[r, 0].get_window_extent()
            assert box.y0 >= row.y0 - 1 and box.y1 <= row.y1 + 1, (CASE_IDS[r], box, row)  # no taller than its row
        assert [label.get_text().replace("\n", "_") for label in labels] == CASE_IDS  # the whole id, wrapped
        cmaps = {ax.images[0].get_cmap().name for ax in axes[:, 1:].ravel()}
        assert cmaps == {visualize.MASK_CMAP}  # graders and samples alike
        assert {ax.images[0].get_clim() for ax in axes[:, 1:].ravel()} == {(0.0, 1.0)}  # on one scale
    finally:
        visualize.plt.close(fig)


def test_label_sample_grid_names_its_references(figures, tmp_path):
    images, maps = torch.rand(2, 3, 8, 16), torch.randint(0, 5, (2, 3, 8, 16))
    visualize.label_sample_grid(images, maps, maps, tmp_path / "g.png", titles=CASE_IDS[:2], reference_name="mode")
    visualize.label_sample_grid(images, maps, maps, tmp_path / "h.png", reference_name="grader")
    modes, graders = ([ax.get_title() for ax in fig.axes[:7]] for fig in figures)
    assert modes == ["image", "mode 0", "mode 1", "mode 2", "sample 0", "sample 1", "sample 2"]
    assert graders[1:4] == ["grader 0", "grader 1", "grader 2"]


def test_presence_histogram_has_integer_ticks_and_says_split_and_s():
    counts, ambiguous = torch.tensor([0, 1, 5, 16, 16, 9]), torch.tensor([False, True, True, False, False, True])
    fig = visualize.presence_histogram(counts, ambiguous, num_samples=16, title="probunet", split="test")
    try:
        fig.canvas.draw()
        ax = fig.axes[0]
        ticks = [t for t in ax.get_xticks() if -0.5 <= t <= 16.5]
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks), ticks
        assert ax.get_title() == "probunet: test split, S = 16"
    finally:
        visualize.plt.close(fig)
    fig = visualize.presence_histogram(counts, ambiguous, num_samples=16)
    try:
        assert fig.axes[0].get_title() == "S = 16"
    finally:
        visualize.plt.close(fig)
