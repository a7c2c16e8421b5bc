"""Ignite handler for the generalized energy distance."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.handlers import IgniteMetricHandler

from ..metrics.ged import GeneralizedEnergyDistanceMetric

__all__ = ["GeneralizedEnergyDistance"]


class GeneralizedEnergyDistance(IgniteMetricHandler):
    """Squared GED (Eq. 6) over an evaluation run; lower is better.

    Expects ``output_transform`` to return ``(y_pred, y)`` with the S sampled label maps in ``y_pred``'s channel
    dimension and the A grader masks in ``y``'s (what :class:`SamplingInferer` and a multi-file label give).
    With a ``CheckpointSaver``, set ``key_metric_negative_sign=True``; on the evaluator set
    ``metric_cmp_fn=lambda cur, prev: cur < prev``.

    Args:
        classes: classes whose IoU is averaged (``(1,)`` for lesions).
        term: ``"ged"`` or one of its terms ``"d_sy"``, ``"d_ss"``, ``"d_yy"``.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
        save_details: store per-image values in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        classes: Sequence[int] = (1,),
        term: str = "ged",
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(
            metric_fn=GeneralizedEnergyDistanceMetric(classes=classes, term=term),
            output_transform=output_transform,
            save_details=save_details,
        )
