"""Figures: sample grids of input + grader masks + hypotheses (paper Figs. 13-17 style)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

__all__ = ["sample_grid"]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


def sample_grid(
    images: torch.Tensor | np.ndarray,
    graders: torch.Tensor | np.ndarray,
    samples: torch.Tensor | np.ndarray,
    path: str | Path | None = None,
    titles: Sequence[str] | None = None,
    max_samples: int = 16,
) -> plt.Figure:
    """One row per image: the image, its grader masks, then its sampled hypotheses.

    Args:
        images: ``B x H x W`` (or ``B x 1 x H x W``) images, any intensity range.
        graders: ``B x A x H x W`` grader label maps.
        samples: ``B x S x H x W`` sampled label maps.
        path: if given, the figure is saved there as PNG (and closed).
        titles: optional row titles (e.g. case ids), length B.
        max_samples: at most this many samples are drawn per row.

    Returns:
        The matplotlib figure (closed if ``path`` was given).
    """
    img, grd, smp = _np(images), _np(graders), _np(samples)[:, :max_samples]
    if img.ndim == 4:
        img = img[:, 0]
    if not (img.ndim == 3 and grd.ndim == 4 and smp.ndim == 4 and len(img) == len(grd) == len(smp)):
        raise ValueError(
            f"expected images B x H x W, graders B x A x H x W and samples B x S x H x W, got "
            f"{img.shape}, {grd.shape} and {smp.shape}."
        )
    b, a, s = img.shape[0], grd.shape[1], smp.shape[1]
    cols = 1 + a + s
    fig, axes = plt.subplots(b, cols, figsize=(1.2 * cols, 1.25 * b), squeeze=False)
    vmax = max(1.0, float(max(grd.max(initial=0), smp.max(initial=0))))
    for r in range(b):
        panels = [(img[r], "gray", None, "image")]
        panels += [(grd[r, k], "viridis", vmax, f"grader {k}") for k in range(a)]
        panels += [(smp[r, k], "magma", vmax, f"sample {k}") for k in range(s)]
        for c, (data, cmap, top, name) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(data, cmap=cmap, vmin=0 if top else None, vmax=top, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=6)
        if titles is not None:
            axes[r, 0].set_ylabel(str(titles[r]), fontsize=6)
    fig.tight_layout(pad=0.2)
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig
