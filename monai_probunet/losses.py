"""The ELBO of the Probabilistic U-Net (paper Eq. 4)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ELBOLoss", "ELBOTerms"]


class ELBOTerms(NamedTuple):
    """The loss and its terms, each a scalar tensor (batch means)."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


class ELBOLoss(nn.Module):
    """Negative ELBO: pixel-summed cross-entropy + ``beta * KL(Q || P)``, both averaged over the batch.

    As in the reference implementation the cross-entropy is summed over pixels and averaged over the batch, so
    ``beta`` keeps the paper's meaning whatever the batch size. Binary lesion masks are 2-class softmax.

    Args:
        beta: weight of the KL term.
        ignore_index: label value excluded from the cross-entropy (e.g. 255 for Cityscapes ignore regions).

    Shapes:
        ``pred``: logits ``B x C x *spatial``, or a tuple ``(logits, kl)`` with ``kl`` of shape ``B`` (what
        ``ProbUNet.forward`` returns); a plain logits tensor means a deterministic model (KL = 0).
        ``target``: ``B x 1 x *spatial`` or ``B x *spatial`` integer labels.
        ``mask``: optional ``B x 1 x *spatial`` / ``B x *spatial``; pixels where it is 0 are ignored.
    """

    def __init__(self, beta: float = 1.0, ignore_index: int | None = None) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}.")
        self.beta = float(beta)
        self.ignore_index = ignore_index

    def forward(
        self,
        pred: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> ELBOTerms:
        logits, kl = pred if isinstance(pred, (tuple, list)) else (pred, None)
        if target.ndim == logits.ndim:
            if target.shape[1] != 1:
                raise ValueError(
                    f"target must hold one label map per image (B x 1 x *spatial), got shape {tuple(target.shape)}."
                )
            target = target[:, 0]
        target = target.long()
        keep = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        if mask is not None:
            keep &= (mask[:, 0] if mask.ndim == logits.ndim else mask).bool()
        safe_target = torch.where(keep, target, torch.zeros_like(target))
        ce_map = F.cross_entropy(logits.float(), safe_target, reduction="none") * keep
        ce = ce_map.flatten(1).sum(dim=1).mean()
        kl_mean = kl.float().mean() if kl is not None else torch.zeros((), device=logits.device)
        return ELBOTerms(ce + self.beta * kl_mean, ce, kl_mean)
