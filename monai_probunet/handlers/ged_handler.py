"""Ignite handler for the generalized energy distance and its terms, computed once per evaluation run."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import IgniteMetricHandler

from ..metrics.ged import GED_TERMS, GeneralizedEnergyDistanceMetric

__all__ = ["GeneralizedEnergyDistance"]


class GeneralizedEnergyDistance(IgniteMetricHandler):
    """Squared GED (Eq. 6), or one of its terms, over an evaluation run; lower is better.

    Expects ``output_transform`` to return ``(y_pred, y)`` with the S sampled label maps in ``y_pred``'s channel
    dimension and the A grader masks in ``y``'s (what :class:`SamplingInferer` and a multi-file label give).
    With a ``CheckpointSaver``, set ``key_metric_negative_sign=True``; on the evaluator set
    ``metric_cmp_fn=lambda cur, prev: cur < prev``.

    Every iteration computes all four terms (one distance matrix per image), so further terms need no second
    pass: a handler built with ``source=`` another :class:`GeneralizedEnergyDistance` computes nothing itself
    and reports its ``term`` from the source's buffer (in a bundle config:
    ``source: '@validate#key_metric#val_ged'``).

    Args:
        classes: classes whose IoU is averaged (default ``(1,)`` for lesions; with ``source``, the source's, and
            a value that differs from the source's is an error).
        term: ``"ged"`` or one of its terms ``"d_sy"``, ``"d_ss"``, ``"d_yy"``.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)`` (not used with ``source``).
        save_details: store the per-image ``N x 4`` terms (ged, d_sy, d_ss, d_yy) in ``engine.state.metric_details``.
        source: a handler attached to the same engine whose computed terms this one reads.
    """

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        term: str = "ged",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        source: GeneralizedEnergyDistance | None = None,
    ) -> None:
        if term not in GED_TERMS:
            raise ValueError(f"term must be one of {GED_TERMS}, got {term!r}.")
        if source is not None:
            if not isinstance(source, GeneralizedEnergyDistance):
                raise ValueError(f"source must be a GeneralizedEnergyDistance handler, got {type(source).__name__}.")
            while source.source is not None:  # read from the handler that computes
                source = source.source
            source_classes = source.metric_fn.classes  # type: ignore[attr-defined]
            if classes is not None and tuple(classes) != source_classes:
                raise ValueError(
                    f"classes {tuple(classes)} differ from the source handler's {source_classes}: a handler with "
                    f"source= reports the source's terms."
                )
            classes = source_classes
        self.source = source
        self.term = term
        super().__init__(
            metric_fn=GeneralizedEnergyDistanceMetric(classes=(1,) if classes is None else classes, term=term),
            output_transform=output_transform,
            save_details=save_details,
        )

    @reinit__is_reduced
    def reset(self) -> None:
        if self.source is None:
            super().reset()

    @reinit__is_reduced
    def update(self, output: Sequence[torch.Tensor]) -> None:
        if self.source is None:
            super().update(output)

    def iteration_completed(self, engine: Any) -> None:
        if self.source is None:  # a term read from the source has no output of its own to transform and check
            super().iteration_completed(engine)

    def compute(self) -> Any:
        if self.source is None:
            return super().compute()
        data = self.source.metric_fn.get_buffer()  # all-gathered once per run by the source's metric
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("the source GeneralizedEnergyDistance handler has no buffered data.")
        self._is_reduced = True
        if self.save_details:
            if self._engine is None or self._name is None:
                raise RuntimeError("please call the attach() function to connect expected engine first.")
            self._engine.state.metric_details[self._name] = data  # type: ignore[attr-defined]
        return data.float()[:, GED_TERMS.index(self.term)].mean().item()
