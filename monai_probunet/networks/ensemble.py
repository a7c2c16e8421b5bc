"""U-Net Ensemble baseline (paper Sec. 3.2, Fig. 2b): independently trained U-Nets, one hypothesis per member.

Members are trained one by one with the deterministic U-Net config, each with its own seed and checkpoint folder
(the paper matches the number of members to the number of samples: 1, 4, 8 or 16), e.g. for 4 members::

    for i in 0 1 2 3; do
      python -m monai.bundle run training \\
        --config_file "['bundle/configs/train.yaml','bundle/configs/unet.yaml']" \\
        --seed $i --ckpt_dir bundle/models/ensemble/member_$i
    done

(the built-in data is generated with ``data_seed``, not ``seed``, so every member sees the same data and only its
initialisation and batch order differ.) Then build the ensemble from the best checkpoints::

    UNetEnsemble.from_checkpoints(
        [f"bundle/models/ensemble/member_{i}/model.pt" for i in range(4)],
        spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128),
    )
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from .unet import DeterministicUNet
from .unet_core import check_image_channels

__all__ = ["UNetEnsemble", "load_member"]

PathLike = str | os.PathLike


def load_member(
    path: PathLike, network_factory: Callable[..., nn.Module] = DeterministicUNet, **network_kwargs: Any
) -> nn.Module:
    """Build ``network_factory(**network_kwargs)`` and load a saved state dict into it (``weights_only=True``).

    ``path`` is a ``model.pt`` state dict written by the bundle's ``CheckpointSaver``, or a checkpoint dict that
    holds it under ``"model"`` (``checkpoint_final.pt``).
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    member = network_factory(**network_kwargs)
    member.load_state_dict(state)
    return member


class UNetEnsemble(nn.Module):
    """An ensemble of independently trained segmentation networks; each member contributes one hypothesis.

    Paper Sec. 3.2: "We report results for ensembles with the number of members matching the required number of
    samples [...]. The original deterministic variant of the U-Net is the 1-sample corner case of an ensemble."
    :meth:`sample` returns member ``s mod K`` for sample ``s = 0 .. S-1``: every member once, in order, when
    ``S == K``; the first S members if ``S < K`` (the others do not run); members repeated cyclically if ``S > K``.
    Each member runs at most once per call. For evaluation only: members are trained separately (see the module
    docstring).

    Args:
        members: K networks whose ``forward(image)`` returns logits ``B x C x *spatial`` (e.g.
            :class:`DeterministicUNet`), or K checkpoint paths loaded with :func:`load_member`.
        network_factory: builds a member for each checkpoint path (default :class:`DeterministicUNet`).
        network_kwargs: arguments of ``network_factory`` for checkpoint paths (e.g. ``channels``).

    Shapes:
        ``forward``: ``B x in_channels x *spatial`` -> ``B x K x C x *spatial`` logits;
        ``sample`` -> ``B x S x C x *spatial``.
    """

    def __init__(
        self,
        members: Sequence[nn.Module | PathLike],
        network_factory: Callable[..., nn.Module] = DeterministicUNet,
        network_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(members, (str, os.PathLike)) or len(members) < 1:
            raise ValueError(f"members must be a non-empty sequence of networks or checkpoint paths, got {members!r}.")
        loaded = [
            m if isinstance(m, nn.Module) else load_member(m, network_factory, **dict(network_kwargs or {}))
            for m in members
        ]
        self.members = nn.ModuleList(loaded)

    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[PathLike],
        network_factory: Callable[..., nn.Module] = DeterministicUNet,
        **network_kwargs: Any,
    ) -> UNetEnsemble:
        """Build every member with ``network_factory(**network_kwargs)`` and load its saved state dict."""
        return cls(list(paths), network_factory, network_kwargs)

    @property
    def num_members(self) -> int:
        return len(self.members)

    def _member_logits(self, image: torch.Tensor, count: int) -> torch.Tensor:
        """Logits of the first ``count`` members, ``B x count x C x *spatial``."""
        first = self.members[0]
        if hasattr(first, "in_channels") and hasattr(first, "spatial_dims"):
            check_image_channels(image, first.in_channels, first.spatial_dims)
        outputs = []
        for member in self.members[:count]:
            out = member(image)
            outputs.append(out[0] if isinstance(out, (tuple, list)) else out)
        return torch.stack(outputs, dim=1)

    def forward(self, image: torch.Tensor, seg: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of all members, ``B x K x C x *spatial`` (``seg`` is ignored)."""
        return self._member_logits(image, self.num_members)

    def sample(
        self, image: torch.Tensor, num_samples: int = 16, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``B x S x C x *spatial`` logits: member ``s mod K`` for sample ``s`` (all members once if ``S == K``).

        ``generator`` is accepted for the common sampling protocol and unused (the members are deterministic).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        logits = self._member_logits(image, min(num_samples, self.num_members))  # each member used runs once
        if num_samples <= self.num_members:
            return logits
        index = torch.arange(num_samples, device=logits.device) % self.num_members
        return logits.index_select(1, index)
