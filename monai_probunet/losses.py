"""The ELBO of the Probabilistic U-Net (paper Eq. 4), and the M-Heads baseline's loss (paper Sec. 3.2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ELBOLoss", "ELBOTerms", "MHeadsLoss"]


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


class MHeadsLoss(nn.Module):
    """The M-Heads loss: per image, the best head's cross-entropy weighted ``1 - eps``, the others ``eps / (M - 1)``.

    Paper Sec. 3.2: "An adjusted cross-entropy loss that adaptively assigns heads to ground-truth hypotheses is
    employed [...]: the loss of the best performing head is weighted with a factor of 1 - epsilon, while the
    remaining heads each contribute with a weight of epsilon / (M - 1) to the loss" (epsilon = 0.05). Each head's
    cross-entropy is summed over pixels (as in :class:`ELBOLoss`); the best head is the one with the lowest
    cross-entropy on that image; the weighted sum is averaged over the batch. With ``M = 1`` it is the plain
    cross-entropy.

    Args:
        eps: total weight of the non-best heads, in ``[0, 1)``.
        ignore_index: label value excluded from the cross-entropy.

    Shapes:
        ``pred``: logits ``B x M x C x *spatial`` (what ``MHeadsUNet.forward`` returns).
        ``target``: ``B x 1 x *spatial`` or ``B x *spatial`` integer labels.
        ``mask``: optional ``B x 1 x *spatial`` / ``B x *spatial``; pixels where it is 0 are ignored.

    Returns:
        :class:`ELBOTerms` with ``loss = ce`` (the weighted cross-entropy) and ``kl = 0``.
    """

    def __init__(self, eps: float = 0.05, ignore_index: int | None = None) -> None:
        super().__init__()
        if not 0.0 <= eps < 1.0:
            raise ValueError(f"eps must be in [0, 1), got {eps}.")
        self.eps = float(eps)
        self.ignore_index = ignore_index

    def head_ce(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pixel-summed cross-entropy of every head, ``B x M``."""
        if isinstance(logits, (tuple, list)) or logits.ndim < 4:
            raise ValueError(
                "pred must be the heads' logits B x M x C x *spatial (MHeadsUNet), got "
                f"{type(logits).__name__ if isinstance(logits, (tuple, list)) else tuple(logits.shape)}."
            )
        b, m = logits.shape[:2]
        spatial = logits.shape[3:]
        if target.ndim == logits.ndim - 1:
            if target.shape[1] != 1:
                raise ValueError(
                    f"target must hold one label map per image (B x 1 x *spatial), got shape {tuple(target.shape)}."
                )
            target = target[:, 0]
        if tuple(target.shape) != (b, *spatial):
            raise ValueError(
                f"target must be B x 1 x *spatial matching pred {tuple(logits.shape)} (B x M x C x *spatial), "
                f"got shape {tuple(target.shape)}."
            )
        target = target.long()
        keep = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        if mask is not None:
            keep &= (mask[:, 0] if mask.ndim == target.ndim + 1 else mask).bool()
        safe_target = torch.where(keep, target, torch.zeros_like(target))
        safe_target = safe_target.unsqueeze(1).expand(b, m, *spatial).reshape(b * m, *spatial)
        ce_map = F.cross_entropy(logits.float().flatten(0, 1), safe_target, reduction="none")
        ce_map = ce_map.reshape(b, m, *spatial) * keep.unsqueeze(1)
        return ce_map.flatten(2).sum(dim=2)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> ELBOTerms:
        ce = self.head_ce(pred, target, mask)  # B x M
        m = ce.shape[1]
        if m == 1:
            weights = torch.ones_like(ce)
        else:
            best = ce.detach().argmin(dim=1, keepdim=True)
            weights = torch.full_like(ce, self.eps / (m - 1)).scatter(1, best, 1.0 - self.eps)
        weighted = (weights * ce).sum(dim=1).mean()
        return ELBOTerms(weighted, weighted, torch.zeros((), device=ce.device))
