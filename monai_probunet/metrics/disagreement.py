"""How much a model's hypotheses of one image disagree: the score that picks the images raters should outline next.

The Probabilistic U-Net counterpart of MONAI Label's MC-dropout "epistemic" score. Two parts, each in [0, 1]:

* presence ambiguity ``4 p (1 - p)``, ``p`` the fraction of hypotheses holding a lesion: 0 when all or none do,
  1 when half do;
* shape disagreement: the mean pairwise ``1 - IoU`` among the lesion-containing hypotheses
  (:func:`~monai_probunet.metrics.distances.pairwise_iou_distance`), 0 with fewer than two of them.

:func:`hypothesis_disagreement` is their mean: 0 for an image every hypothesis calls empty or outlines alike.
"""

from __future__ import annotations

import numpy as np
import torch

from .distances import pairwise_iou_distance

__all__ = ["hypothesis_disagreement", "presence_ambiguity", "shape_disagreement"]


def _as_maps(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"labels must be S x *spatial hypotheses (S >= 1), got shape {list(x.shape)}.")
    if x.is_floating_point() or x.dtype == torch.bool:
        x = x.to(torch.uint8)
    if bool(((x != 0) & (x != 1)).any()):
        raise ValueError("labels must be binary (0/1) lesion masks.")
    return x.to(torch.uint8)


def presence_ambiguity(labels: np.ndarray | torch.Tensor) -> float:
    """``4 p (1 - p)``, ``p`` the fraction of the ``S x *spatial`` hypotheses that hold any lesion voxel."""
    x = _as_maps(labels)
    p = float((x.flatten(1) != 0).any(dim=1).float().mean())
    return 4.0 * p * (1.0 - p)


def shape_disagreement(labels: np.ndarray | torch.Tensor) -> float:
    """Mean pairwise ``1 - IoU`` over the pairs of lesion-containing hypotheses (``S x *spatial``); 0 with < 2."""
    x = _as_maps(labels)
    lesion = x[(x.flatten(1) != 0).any(dim=1)]
    n = lesion.shape[0]
    if n < 2:
        return 0.0
    d = pairwise_iou_distance(lesion[None])[0]  # n x n, zero diagonal
    return float(d.sum() / (n * (n - 1)))


def hypothesis_disagreement(labels: np.ndarray | torch.Tensor) -> float:
    """Disagreement of a model's hypotheses of one image, in [0, 1] (the module docstring).

    Args:
        labels: ``S x *spatial`` binary hypotheses (e.g. ``S x H x W`` samples of the Probabilistic U-Net).

    Returns:
        ``(presence_ambiguity + shape_disagreement) / 2``.
    """
    return 0.5 * (presence_ambiguity(labels) + shape_disagreement(labels))
