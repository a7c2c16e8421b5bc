"""The ELBO of the Probabilistic U-Net (paper Eq. 4), an energy score of its samples, and the M-Heads baseline's loss
(paper Sec. 3.2)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ELBOLoss", "ELBOTerms", "MHeadsLoss", "empty_sample_ce", "energy_score"]


class ELBOTerms(NamedTuple):
    """The loss and its terms, each a scalar tensor (batch means); ``energy`` only with a sample loss."""

    loss: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor
    energy: torch.Tensor | None = None


class ELBOLoss(nn.Module):
    """Negative ELBO: pixel-summed cross-entropy + ``beta * KL(Q || P)``, both averaged over the batch.

    As in the reference implementation the cross-entropy is summed over pixels and averaged over the batch, so
    ``beta`` keeps the paper's meaning whatever the batch size. Binary lesion masks are 2-class softmax.

    With ``sample_weight > 0`` (not in the paper) the loss adds ``sample_weight`` times the batch mean of the
    :func:`energy_score` of draws from the prior against all graders' masks. The ELBO trains the prior only through
    the KL to the posterior, slowly; this term scores the hypotheses a user will see, so the prior also learns how
    often each image's graders draw a lesion. Whether it also trains the decoder that draws them is the network's
    setting (``ProbUNet(sample_gradient=...)``).

    With ``empty_weight > 0`` (not in the paper) it adds ``empty_weight`` times :func:`empty_sample_ce`: on the
    images that every grader left empty (lesion-free crops), the prior's draws must be empty too. The ELBO decodes
    such an image only from its posterior, which says "nothing there", so a draw from the prior's lesion-showing
    region is never decoded on lesion-free anatomy in training; with ``ProbUNet(sample_gradient="decoder")`` this
    term teaches the decoder to keep those draws empty there, without moving the prior.

    Args:
        beta: weight of the KL term.
        ignore_index: label value excluded from the cross-entropy (e.g. 255 for Cityscapes ignore regions).
        sample_weight: weight of the energy score of the prior's samples (0: the paper's ELBO).
        empty_weight: weight of the prior's samples' cross-entropy to background on the images without any
            grader's foreground (0: off).

    Shapes:
        ``pred``: logits ``B x C x *spatial``, or a tuple ``(logits, kl)`` with ``kl`` of shape ``B`` (what
        ``ProbUNet.forward`` returns), or ``(logits, kl, samples)`` with the prior's sample logits
        ``B x S x C x *spatial`` (``ProbUNet.forward(..., num_prior_samples=S)``); a plain logits tensor means a
        deterministic model (KL = 0).
        ``target``: ``B x 1 x *spatial`` or ``B x *spatial`` integer labels.
        ``mask``: optional ``B x 1 x *spatial`` / ``B x *spatial``; pixels where it is 0 are ignored.
        ``graders``: ``B x A x *spatial`` integer labels of all graders (needed with ``sample_weight > 0`` or
        ``empty_weight > 0``).
    """

    def __init__(
        self, beta: float = 1.0, ignore_index: int | None = None, sample_weight: float = 0.0, empty_weight: float = 0.0
    ) -> None:
        super().__init__()
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}.")
        for name, value in (("sample_weight", sample_weight), ("empty_weight", empty_weight)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}.")
        self.beta = float(beta)
        self.ignore_index = ignore_index
        self.sample_weight = float(sample_weight)
        self.empty_weight = float(empty_weight)

    def forward(
        self,
        pred: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        graders: torch.Tensor | None = None,
    ) -> ELBOTerms:
        samples = None
        if isinstance(pred, (tuple, list)) and len(pred) == 3:
            pred, samples = pred[:2], pred[2]
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
        loss = ce + self.beta * kl_mean
        if self.sample_weight == 0.0 and self.empty_weight == 0.0:
            return ELBOTerms(loss, ce, kl_mean)
        what = "sample_weight" if self.sample_weight > 0 else "empty_weight"
        if samples is None:
            raise ValueError(
                f"{what} > 0 needs the network's prior samples: train with prior_samples >= "
                f"{2 if self.sample_weight > 0 else 1} (ProbUNetTrainer; the network's "
                "forward(..., num_prior_samples=S))."
            )
        if graders is None:
            raise ValueError(f"{what} > 0 needs the graders' masks (graders=B x A x *spatial).")
        if self.empty_weight > 0:
            loss = loss + self.empty_weight * empty_sample_ce(samples, graders, self.ignore_index)
        if self.sample_weight == 0.0:
            return ELBOTerms(loss, ce, kl_mean)
        energy = energy_score(samples, graders, self.ignore_index).mean()
        return ELBOTerms(loss + self.sample_weight * energy, ce, kl_mean, energy.detach())


def empty_sample_ce(samples: torch.Tensor, graders: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """How far the draws are from empty where every grader drew nothing: a batch mean, as the ELBO's cross-entropy.

    For each image whose graders all label every pixel background (0; ``ignore_index`` pixels aside), the
    pixel-summed cross-entropy of each draw's logits to background, averaged over the draws; other images add 0.
    The sum is divided by the batch size, so the term weighs one lesion-free image as the ELBO's cross-entropy does.

    Shapes:
        ``samples``: logits ``B x S x C x *spatial`` (S >= 1); ``graders``: ``B x A x *spatial`` integer labels;
        returns a scalar.
    """
    graders = graders.long()
    keep = torch.ones_like(graders[:, 0], dtype=torch.bool)
    fg = graders != 0
    if ignore_index is not None:
        keep = (graders != ignore_index).all(dim=1)
        fg &= graders != ignore_index
    empty = ~fg.flatten(1).any(dim=1)  # B
    b = samples.shape[0]
    if not bool(empty.any()):
        return samples.sum() * 0.0
    logp_bg = torch.log_softmax(samples[empty].float(), dim=2)[:, :, 0]  # E x S x *spatial
    ce = -(logp_bg * keep[empty].unsqueeze(1)).flatten(2).sum(dim=2).mean(dim=1)  # E
    return ce.sum() / b


def energy_score(samples: torch.Tensor, graders: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Energy score of the samples' class probabilities against the graders' masks, per image.

    ``E||S - Y|| - E||S - S'|| / 2`` with the Euclidean norm over one-hot classes and pixels (Gneiting & Raftery
    2007): a strictly proper score of the distribution of segmentations, lowest when the samples are distributed as
    the graders' masks. A missed lesion costs the square root of its area, so a large lesion drawn too rarely
    costs more than a small one. Pixels that any grader marks ``ignore_index`` are left out.

    Shapes:
        ``samples``: logits ``B x S x C x *spatial`` (S >= 2); ``graders``: ``B x A x *spatial`` integer labels;
        returns ``B``.
    """
    b, s, c = samples.shape[:3]
    if s < 2:
        raise ValueError(f"the energy score needs >= 2 samples per image, got {s}.")
    graders = graders.long()
    keep = torch.ones_like(graders[:, :1], dtype=torch.bool)
    if ignore_index is not None:
        keep = (graders != ignore_index).all(dim=1, keepdim=True)
        graders = torch.where(graders == ignore_index, torch.zeros_like(graders), graders)
    probs = torch.softmax(samples.float(), dim=2) * keep.unsqueeze(2)  # B x S x C x *spatial
    onehot = F.one_hot(graders, c).movedim(-1, 2).float() * keep.unsqueeze(2)  # B x A x C x *spatial
    probs, onehot = probs.flatten(2), onehot.flatten(2)
    to_graders = (probs.unsqueeze(2) - onehot.unsqueeze(1)).pow(2).sum(-1).add(1e-6).sqrt()  # B x S x A
    i, j = torch.triu_indices(s, s, offset=1, device=samples.device)
    between = (probs[:, i] - probs[:, j]).pow(2).sum(-1).add(1e-6).sqrt()  # B x S(S-1)/2
    return to_graders.mean(dim=(1, 2)) - 0.5 * between.mean(dim=1)


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
