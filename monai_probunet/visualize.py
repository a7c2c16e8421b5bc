"""Figures: sample grids (paper Figs. 13-17 style), evaluation curves (Figs. 4, 6, 12 style) and the calibration
figures of the class-flipping task (Fig. 5, Appendix C): every plot of the package, as files (Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .metrics.calibration import ModeCalibration, PixelMarginals  # noqa: E402

__all__ = ["sample_grid", "save_figure"]


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` (creating its folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float32)


#: the colour map of every label map of :func:`sample_grid` (grader masks and samples alike, on one scale)
MASK_CMAP = "magma"


def _wrap_id(text: str, width: int = 16) -> str:
    """``text`` broken into lines of about ``width`` characters at ``_`` (a case id such as
    ``LIDC-IDRI-0035_s0046_n00_k114`` -> two lines), so that a row title is no taller than its row."""
    lines: list[str] = []
    for part in str(text).split("_"):
        if lines and len(lines[-1]) + 1 + len(part) <= width:
            lines[-1] += "_" + part
        else:
            lines.append(part)
    return "\n".join(lines)


def _row_title(ax: plt.Axes, text: str) -> None:
    """``text`` (wrapped) left of a row's first panel, horizontal, so that long case ids neither overlap the next
    row nor are cut off (the figure's layout makes room for it)."""
    ax.set_ylabel(_wrap_id(text), fontsize=6, rotation=0, ha="right", va="center", labelpad=3)


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
        titles: optional row titles (e.g. case ids), length B, left of each row.
        max_samples: at most this many samples are drawn per row.

    Grader masks and samples share one colour map (:data:`MASK_CMAP`) and one scale, so a label looks the same in
    every column.

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
        panels += [(grd[r, k], MASK_CMAP, vmax, f"grader {k}") for k in range(a)]
        panels += [(smp[r, k], MASK_CMAP, vmax, f"sample {k}") for k in range(s)]
        for c, (data, cmap, top, name) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(data, cmap=cmap, vmin=0 if top else None, vmax=top, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=6)
        if titles is not None:
            _row_title(axes[r, 0], titles[r])
    fig.tight_layout(pad=0.2)
    if path is not None:
        save_figure(fig, path, dpi=100)
    return fig


# ------------------------------------------------------------------ evaluation figures (Figs. 4, 6, 12 style)

if TYPE_CHECKING:
    from .metrics import PresenceThreshold

__all__ += ["ged_vs_samples", "latent_grid", "presence_histogram"]


def ged_vs_samples(
    results: dict[str, dict],
    path: str | Path | None = None,
    metric: str = "ged",
    title: str | None = None,
    references: dict[str, float] | None = None,
) -> plt.Figure:
    """Mean of a metric against the number of samples S, one line per model, with CI error bars (Fig. 4 style).

    Args:
        results: ``{name: summary}`` with ``summary["metrics"][metric]`` a list of ``{"S", "mean", "ci_low",
            "ci_high"}`` (:meth:`monai_probunet.evaluation.EvaluationResult.summary`); the model named ``"oracle"``
            is drawn dashed in black.
        path: if given, the figure is saved there as PNG (and closed).
        metric: which metric to plot (default the squared GED).
        title: optional title (default: the estimator, if the summaries state it).
        references: optional ``{name: value}`` of single answers (repeated, one scores the same at every S), each
            drawn as a dotted horizontal line.

    Returns:
        The matplotlib figure (closed if ``path`` was given).
    """
    many = len(results) + len(references or {}) > 4  # legend beside the axes, not over the curves
    fig, ax = plt.subplots(figsize=(7.0 if many else 4.5, 3.4))
    all_s: set[int] = set()
    for name, summary in results.items():
        try:
            entries = [e for e in summary["metrics"][metric] if e.get("mean") is not None]
        except (KeyError, TypeError) as e:
            raise ValueError(f"results[{name!r}] has no summary['metrics'][{metric!r}] list.") from e
        if not entries:
            continue
        s = np.array([e["S"] for e in entries], dtype=float)
        mean = np.array([e["mean"] for e in entries], dtype=float)
        lo = np.array([e["ci_low"] if e.get("ci_low") is not None else e["mean"] for e in entries], dtype=float)
        hi = np.array([e["ci_high"] if e.get("ci_high") is not None else e["mean"] for e in entries], dtype=float)
        style = dict(color="black", linestyle="--") if name == "oracle" else {}
        ax.errorbar(s, mean, yerr=[mean - lo, hi - mean], marker="o", ms=4, capsize=3, label=name, **style)
        all_s.update(int(v) for v in s)
    for name, value in (references or {}).items():
        ax.axhline(value, color="grey", linestyle=":", linewidth=1.5, label=f"{name}, repeated")
    if all_s:
        ax.set_xscale("log", base=2)
        ticks = sorted(all_s)
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
    ax.set_xlabel("number of samples S")
    ax.set_ylabel("squared GED" if metric == "ged" else metric)
    estimator = next((r.get("estimator") for r in results.values() if isinstance(r, dict) and r.get("estimator")), None)
    ax.set_title(title or (estimator or metric), fontsize=7)
    ax.grid(alpha=0.3)
    if many:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig


def presence_histogram(
    counts: torch.Tensor | np.ndarray,
    ambiguous: torch.Tensor | np.ndarray,
    threshold: PresenceThreshold | None = None,
    path: str | Path | None = None,
    num_samples: int | None = None,
    title: str | None = None,
    split: str | None = None,
) -> plt.Figure:
    """Histograms of lesion-presence counts for ambiguous and unambiguous images (Fig. 12 style).

    Args:
        counts: ``N`` lesion-presence counts in ``[0, S]`` (samples with a lesion, of S).
        ambiguous: ``N`` bool, graders disagree on presence.
        threshold: optional :class:`~monai_probunet.metrics.PresenceThreshold`; its ambiguous interval
            ``low < count < high`` is shaded.
        path: if given, the figure is saved there as PNG (and closed).
        num_samples: S (default ``threshold.num_samples``, else ``max(counts)``).
        title: optional title (e.g. the model name); the split (if given) and S are added to it.
        split: the split the counts are of (e.g. ``"test"``), shown in the title.

    Returns:
        The matplotlib figure (closed if ``path`` was given).
    """
    c = _np(counts).astype(np.int64).ravel()
    amb = _np(ambiguous).astype(bool).ravel()
    if c.shape != amb.shape:
        raise ValueError(f"counts and ambiguous must both be N values, got shapes {c.shape} and {amb.shape}.")
    if num_samples is None:
        num_samples = threshold.num_samples if threshold is not None else max(int(c.max(initial=0)), 1)
    s = int(num_samples)
    bins = np.arange(s + 2) - 0.5
    fig, ax = plt.subplots(figsize=(6.2, 3.0))
    ax.hist([c[~amb], c[amb]], bins=bins, label=["unambiguous", "ambiguous"], color=["tab:blue", "tab:orange"])
    if threshold is not None:
        ax.axvspan(threshold.low + 0.5, threshold.high - 0.5, color="gray", alpha=0.2,
                   label=f"predicted ambiguous ({threshold.low} < count < {threshold.high})")
    ax.set_xlim(-0.5, s + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no tick at 2.5
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"samples with a lesion (of {s})")
    ax.set_ylabel("images")
    where = ", ".join(p for p in (f"{split} split" if split else "", f"S = {s}") if p)
    ax.set_title(f"{title}: {where}" if title else where, fontsize=8)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # never over a bar
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=120)
    return fig


def latent_grid(
    model: torch.nn.Module,
    image: torch.Tensor,
    path: str | Path | None = None,
    extent: float = 3.0,
    steps: int = 7,
    graders: torch.Tensor | None = None,
) -> np.ndarray:
    """Decode a grid over a 2-D latent space around the prior mean (Fig. 6 style).

    The latent at grid cell ``(i, j)`` is ``z = mu + L (t_j, t_i)`` with ``t = linspace(-extent, extent, steps)``
    and ``N(mu, L L^T)`` the prior for this image (``L = diag(sigma)`` for the paper's axis-aligned prior), i.e. the
    axes are in units of the prior's sigma (whitened coordinates).
    With ``graders``, each grader mask's posterior mean is marked (green numbers) in the same units, with the
    1-3 sigma circles.

    Args:
        model: a :class:`~monai_probunet.networks.ProbUNet` with ``latent_dim == 2`` (``prior_loc_scale_tril``,
            ``prior_latents``, ``decode``).
        image: ``C x *spatial`` or ``1 x C x *spatial``.
        path: if given, the mosaic is saved there as PNG.
        extent: half-width of the grid in prior sigmas.
        steps: grid points per axis.
        graders: optional ``A x *spatial`` grader masks.

    Returns:
        ``steps x steps x *spatial`` int64 labels; entry ``[i, j]`` decodes ``(z0, z1) = (t_j, t_i)`` in sigmas.

    Raises:
        ValueError: if the model has no 2-D latent space, or ``steps < 1``.
    """
    latent_dim = getattr(model, "latent_dim", None)
    if not (hasattr(model, "prior_loc_scale_tril") and hasattr(model, "decode")):
        raise ValueError(
            f"latent_grid needs a ProbUNet-like model (prior_loc_scale_tril, decode), got {type(model).__name__}."
        )
    if latent_dim != 2:
        raise ValueError(
            f"latent_grid needs a 2-D latent space (latent_dim == 2), the model has latent_dim={latent_dim}."
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    device = next(model.parameters()).device
    spatial_dims = int(getattr(model, "spatial_dims", image.ndim - 1))
    if image.ndim == spatial_dims + 1:
        image = image.unsqueeze(0)
    if image.ndim != spatial_dims + 2 or image.shape[0] != 1:
        raise ValueError(
            f"image must be C x *spatial or 1 x C x *spatial ({spatial_dims}-D), got {tuple(image.shape)}."
        )
    x = image.float().to(device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            mu, scale_tril = model.prior_loc_scale_tril(x)  # 1 x 2, 1 x 2 x 2 (diag(sigma) if axis-aligned)
            t = torch.linspace(-extent, extent, steps, device=device, dtype=mu.dtype)
            t1, t0 = torch.meshgrid(t, t, indexing="ij")  # [i, j] -> (z0, z1) = (t[j], t[i])
            unit = torch.stack([t0, t1], dim=-1).reshape(1, steps * steps, 2)
            z = model.prior_latents(x, unit)  # mu + L t
            labels = model.decode(x, z).argmax(dim=2)[0]  # (steps * steps) x *spatial
            positions = None
            if graders is not None:
                g = graders.long().to(device).unsqueeze(1)  # A x 1 x *spatial
                q = model.posterior(x.expand(g.shape[0], *x.shape[1:]), g)
                offsets = (q.mean - mu).T  # 2 x A
                positions = torch.linalg.solve_triangular(scale_tril[0], offsets, upper=False).T.cpu().numpy()
    finally:
        model.train(was_training)
    grid = labels.reshape(steps, steps, *labels.shape[1:]).cpu().numpy()
    if path is not None:
        if grid.ndim != 4:
            raise ValueError(f"latent_grid can draw 2-D images only, got decoded maps of shape {grid.shape[2:]}.")
        h, w = grid.shape[2:]
        mosaic = np.full((steps * (h + 1) - 1, steps * (w + 1) - 1), np.nan)  # NaN: white separators
        for i in range(steps):
            r = steps - 1 - i  # top row = largest z1
            for j in range(steps):
                mosaic[r * (h + 1) : r * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = grid[i, j]
        half = extent + (extent / max(steps - 1, 1) if steps > 1 else 0.5)
        fig, ax = plt.subplots(figsize=(5, 5))
        cmap = plt.get_cmap("magma").with_extremes(bad="white")
        ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=max(1, int(grid.max())), extent=(-half, half, -half, half),
                  interpolation="nearest")
        for k in range(1, int(extent) + 1):
            ax.add_patch(plt.Circle((0, 0), k, fill=False, color="yellow", lw=0.8, alpha=0.8))
        if positions is not None:
            for a, (p0, p1) in enumerate(positions):
                ax.text(p0, p1, str(a), color="lime", fontsize=9, ha="center", va="center", fontweight="bold")
        ax.set_xlabel("z0 (prior sigma)")
        ax.set_ylabel("z1 (prior sigma)")
        ax.set_title("decoded prior latent grid", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return grid


# ------------------------------------------------------------------ class-flipping task figures (Fig. 5, Appendix C)

__all__ += ["SCENE_PALETTE", "colourise", "label_sample_grid", "mode_calibration_plot", "pixel_marginals_plot"]

#: RGB colour of each class: the official Cityscapes colours of train ids 0..18, then five loud colours for the
#: flipped classes 19..23 (sidewalk 2, person 2, car 2, vegetation 2, road 2); the ignore label is black
SCENE_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0),
    (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    (255, 160, 0), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 140),
)  # fmt: skip


def colourise(label: torch.Tensor | np.ndarray, palette: Sequence[Sequence[int]] = SCENE_PALETTE) -> np.ndarray:
    """``*spatial`` integer label map -> ``*spatial x 3`` uint8 RGB; labels outside the palette (ignore) are black."""
    lab = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label).astype(np.int64)
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(palette)] = np.asarray(palette, np.uint8)
    return pal[np.clip(lab, 0, 255)] * ((lab >= 0) & (lab < len(palette)))[..., None].astype(np.uint8)


def label_sample_grid(
    images: torch.Tensor, references: torch.Tensor, samples: torch.Tensor, path: str | Path,
    titles: Sequence[str] | None = None, palette: Sequence[Sequence[int]] = SCENE_PALETTE,
    reference_name: str = "ref",
) -> Path:
    """One row per image: the RGB image, its reference label maps (e.g. graders or modes) and its samples, in colour.

    Args:
        images: ``N x 3 x H x W`` in [0, 1] (or ``N x 1 x H x W`` grey).
        references: ``N x A x H x W`` label maps.
        samples: ``N x S x H x W`` label maps.
        path: PNG path.
        titles: per-row labels (e.g. case ids), left of each row.
        palette: class colours (default :data:`SCENE_PALETTE`).
        reference_name: what the reference maps are, the title of their columns (``"grader"`` -> ``grader 0``,
            ``grader 1``, ...; ``"mode"`` for the most probable modes); say which, the figure does not know.

    Returns:
        ``path``.
    """
    n, a, s = images.shape[0], references.shape[1], samples.shape[1]
    h, w = images.shape[-2:]
    cols = 1 + a + s
    fig, axes = plt.subplots(n, cols, figsize=(cols * 1.6 * w / max(h, w) * 1.2, n * 1.6 * h / max(h, w) * 1.2 + 0.3),
                             squeeze=False)  # fmt: skip
    for r in range(n):
        img = images[r].float().cpu()
        img = img[0] if img.shape[0] == 1 else img[:3].permute(1, 2, 0)
        panels = [(img.clamp(0, 1).numpy(), "image")]
        panels += [(colourise(references[r, k], palette), f"{reference_name} {k}") for k in range(a)]
        panels += [(colourise(samples[r, k], palette), f"sample {k}") for k in range(s)]
        for c, (data, name) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(data, cmap="gray" if data.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=6)
        if titles is not None:
            _row_title(axes[r, 0], titles[r])
    fig.tight_layout()
    return save_figure(fig, path, dpi=100)


def mode_calibration_plot(
    calibrations: ModeCalibration | Mapping[str, ModeCalibration], path: str | Path, exact: bool = False,
    title: str | None = None,
) -> Path:
    """Fig. 5: true probability of each flip pattern (x) vs the frequency of samples matched to it (y).

    Args:
        calibrations: one :class:`ModeCalibration` or ``{model name: ModeCalibration}`` (one marker each).
        path: PNG path.
        exact: plot the frequencies over the images with every flip visible instead of the attributed ones.
        title: figure title.

    Returns:
        ``path``.
    """
    cals = {"model": calibrations} if isinstance(calibrations, ModeCalibration) else dict(calibrations)
    if not cals:
        raise ValueError("nothing to plot: pass at least one ModeCalibration.")
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    top = 0.0
    markers = "osD^vP*X"
    for i, (name, cal) in enumerate(cals.items()):
        freq = cal.exact_frequencies if exact else cal.frequencies
        r, _ = cal.exact_pearson if exact else cal.pearson
        ax.scatter(cal.true_probs, freq, s=22, marker=markers[i % len(markers)], alpha=0.8,
                   label=f"{name} (r = {r:.3f}, {cal.modes_hit}/{len(cal.patterns)} modes)")  # fmt: skip
        top = max(top, float(np.nanmax(np.r_[cal.true_probs, freq])))
    top = 1.08 * top if top > 0 else 1.0
    ax.plot([0, top], [0, top], color="tab:blue", lw=1, ls="--", label="bisector")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("ground-truth mode probability")
    ax.set_ylabel("predicted mode frequency" + (" (all flips visible)" if exact else ""))
    ax.set_title(title or "Reproduction of the mode probabilities")
    # beside the axes: inside them any corner can hold a mode (a collapsed model puts one high on the left)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def pixel_marginals_plot(
    marginals: PixelMarginals | Mapping[str, PixelMarginals], path: str | Path, title: str | None = None
) -> Path:
    """Appendix C: per flippable class, stacked bars of the sampled fractions of its ground-truth pixels predicted as
    the new class, as the class itself and as anything else; a black tick marks the true flip probability.

    Args:
        marginals: one :class:`PixelMarginals` or ``{model name: PixelMarginals}`` (one bar per model and class).
        path: PNG path.
        title: figure title.

    Returns:
        ``path``.
    """
    margs = {"model": marginals} if isinstance(marginals, PixelMarginals) else dict(marginals)
    if not margs:
        raise ValueError("nothing to plot: pass at least one PixelMarginals.")
    first = next(iter(margs.values()))
    k, n = len(first.names), len(margs)
    height = 0.8 / n
    fig, ax = plt.subplots(figsize=(7.0, 0.5 + 0.55 * k * max(1, n)))
    hatches = ["", "//", "..", "xx", "\\\\", "++"]
    for i, (name, pm) in enumerate(margs.items()):
        y = np.arange(k) + (i - (n - 1) / 2) * height
        f, kept, o = np.nan_to_num(pm.p_flipped), np.nan_to_num(pm.p_kept), np.nan_to_num(pm.p_other)
        style = dict(height=height, hatch=hatches[i % len(hatches)], edgecolor="white", linewidth=0.5)
        ax.barh(y, f, color="tab:orange", label="new class c'", **style)
        ax.barh(y, kept, left=f, color="tab:gray", label="same class c", **style)
        ax.barh(y, o, left=f + kept, color="tab:red", label="other class", **style)
        for yy, v in zip(y, f):
            ax.text(min(v, 0.9), yy, f" {v:.3f}" + (f"  {name}" if n > 1 else ""), va="center", fontsize=7)
    for j, q in enumerate(first.flip_probs):
        ax.plot([q, q], [j - 0.45, j + 0.45], color="black", lw=2)
    ax.plot([], [], color="black", lw=2, label="true flip probability")
    ax.set_yticks(np.arange(k))
    ax.set_yticklabels([f"{s} -> {t}" for s, t in zip(first.names, first.target_names)])
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of sampled pixels, given the ground-truth class")
    ax.set_title(title or "Pixel-wise marginal frequencies p(predicted | ground truth)")
    ax.invert_yaxis()
    uniq: dict = {}
    for handle, label in zip(*ax.get_legend_handles_labels()):
        uniq.setdefault(label, handle)  # the first model's plain bars, not the last one's hatching
    # beside the axes: the stacked bars fill the whole width, a legend inside would cover some
    ax.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)
