"""``lidc_phantom``'s synthetic image: a chest CT window around a lesion drawn from a perturbed consensus of the
reader masks (:func:`render_phantom_image`), never from one reader's mask."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, gaussian_filter

from .chest_phantom import ChestScene, draw_chest_scene, lesion_site, render_chest
from .phantom_tiles import TILE_SPACING

__all__ = ["lesion_radius_mm", "render_phantom_image"]


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth Gaussian noise with unit standard deviation (correlation length ``sigma`` pixels)."""
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-12)


def render_phantom_image(
    rng: np.random.Generator,
    masks: np.ndarray,
    spacing: float = TILE_SPACING,
    scene: ChestScene | None = None,
    centre: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a chest CT window (HU) around a lesion drawn from a perturbed consensus of the reader masks.

    The window shows a synthetic chest slice (:mod:`~monai_probunet.data.chest_phantom`: lungs with vessels, ribs,
    spine, mediastinum, airway, chest wall) centred at a lung site with room for the lesion. The lesion is ``mean of
    the non-empty masks`` -> Gaussian smoothing (0.5 mm) -> threshold at a random fraction in [0.3, 0.7] of its
    peak -> erosion, nothing or dilation by one pixel (equally likely) -> edges blurred (0.4 mm); it is painted in
    soft-tissue HU (-60..+50 with texture) into the window before the scene's blur and noise. The result depends on the *set* of non-empty masks only,
    not on their order or on the empty ones, so it cannot single out one reader.

    Args:
        rng: random generator (the image is a deterministic function of its state, the masks, scene and centre).
        masks: ``(A, H, W)`` binary reader masks of one slice (A >= 1), centred on the window.
        spacing: pixel spacing in mm.
        scene: the chest slice (drawn from ``rng`` when ``None``); the slices of one lesion share one.
        centre: the window's centre in the scene (mm); ``None``: a lung site drawn from ``rng`` for this lesion.

    Returns:
        ``(image (H, W) float32 HU, lesion (H, W) bool)``: ``lesion`` is the thresholded, perturbed consensus before
        the edge blur (empty when every mask is empty).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise ValueError(f"masks must be (A, H, W) with A >= 1, got shape {masks.shape}.")
    shape = (int(masks.shape[1]), int(masks.shape[2]))
    mm = 1.0 / spacing  # pixels per mm
    # all random draws of the lesion first, in a fixed order, whatever the masks
    level = rng.uniform(0.3, 0.7)
    morph = int(rng.integers(-1, 2))  # -1 erode, 0 keep, +1 dilate
    lesion_hu = rng.uniform(-60.0, 50.0)
    lesion_texture = 20.0 * _unit_noise(rng, shape, 1.0 * mm)
    drawn = [m.astype(bool) for m in masks if m.any()]
    if scene is None:
        scene = draw_chest_scene(rng)
    if centre is None:
        centre = lesion_site(scene, rng, lesion_radius_mm(masks, spacing))
    lesion = np.zeros(shape, bool)
    if drawn:
        consensus = gaussian_filter(np.mean(drawn, axis=0), 0.5 * mm)
        lesion = consensus >= level * consensus.max()  # relative to the peak: small lesions never vanish
        if morph:
            cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)
            changed = (binary_dilation if morph > 0 else binary_erosion)(lesion, cross)
            lesion = changed if changed.any() else lesion
    soft = np.clip(gaussian_filter(lesion.astype(np.float64), 0.4 * mm), 0.0, 1.0)

    def paint(hu: np.ndarray) -> np.ndarray:  # under the scene's blur and noise, like the anatomy around it
        return hu + soft * (lesion_hu + lesion_texture - hu)

    image = render_chest(scene, rng, centre, shape, spacing, paint=paint if drawn else None)
    return image.astype(np.float32), lesion


def lesion_radius_mm(masks: np.ndarray, spacing: float) -> float:
    """Radius (mm) of the disc as large as the union of the reader masks (all slices of ``(..., H, W)``)."""
    union = np.asarray(masks).reshape(-1, *np.shape(masks)[-2:]).any(0)
    return float(np.sqrt(union.sum() / np.pi) * spacing)
