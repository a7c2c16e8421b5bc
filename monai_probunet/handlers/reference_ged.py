"""Ignite handler: the validation split's best single answer beside the model's GED, at every validation."""

from __future__ import annotations

import logging
from typing import Any

import torch
from ignite.engine import Engine, Events

from ..metrics.references import best_single_answer, mean_reference_geds
from .ged_handler import GeneralizedEnergyDistance

__all__ = ["ReferenceGED"]

logger = logging.getLogger(__name__)


class ReferenceGED:
    """Report, at every run of an evaluator, the squared GED of the best single answer on its data: the graders'
    majority vote repeated (:mod:`~monai_probunet.metrics.references`; several classes: the pixel-wise vote), the
    value the model's GED must go below for its samples to pay for themselves. It is written into
    ``engine.state.metrics[name]``, so the evaluator's ``StatsHandler`` and MLflow show it beside ``val_ged``;
    computed once, on the first run, from the evaluator's dataset (each item's ``label_key``: the ``A x *spatial``
    grader masks) with the classes of ``source``. Attach it before the handlers that log the metrics.

    Args:
        source: the :class:`GeneralizedEnergyDistance` handler whose classes (and images) the model is scored by.
        name: the metric's name.
        label_key: the key of the grader masks in the evaluator's dataset items.
    """

    def __init__(
        self, source: GeneralizedEnergyDistance, name: str = "val_ged_vote", label_key: str = "label"
    ) -> None:
        while source.source is not None:
            source = source.source
        self.classes = tuple(source.metric_fn.classes)  # type: ignore[attr-defined]
        self.name = name
        self.label_key = label_key
        self.value: float | None = None

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def compute(self, dataset: Any) -> tuple[float, str]:
        """The best single answer's mean squared GED over ``dataset`` and its name."""
        images = ((torch.as_tensor(item[self.label_key]).round().long(), None, None) for item in dataset)
        rows = mean_reference_geds(images, self.classes)
        if not rows:
            raise ValueError("the evaluator's dataset is empty: no reference to compute.")
        best = rows[best_single_answer({k: r["ged"] for k, r in rows.items()})]
        return best["ged"], best["label"]

    def __call__(self, engine: Engine) -> None:
        if self.value is None:
            loader = getattr(engine, "data_loader", None) or engine.state.dataloader  # a MONAI workflow's, or ignite's
            self.value, label = self.compute(loader.dataset)  # type: ignore[union-attr]
            logger.info("%s = %.4f: the %s repeated, the GED a model must go below", self.name, self.value, label)
        engine.state.metrics[self.name] = self.value
