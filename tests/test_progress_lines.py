"""TrainingProgress says which loss its lines show: the last iteration's, not the epoch mean MONAI's line gives."""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine

from monai_probunet.engines import loss_terms
from monai_probunet.handlers import TrainingProgress


def test_epoch_line_names_the_last_iterations_loss(caplog):
    losses = iter([8.0, 4.0, 2.0, 1.0])  # epoch mean 3.75, last iteration 1.0
    engine = Engine(lambda e, b: {"loss": torch.tensor(next(losses)), "ce": 0.5, "kl": 0.25})
    TrainingProgress(interval_s=3600, output_transform=loss_terms, tty=False, name="t.lines").attach(engine)
    with caplog.at_level(logging.INFO, logger="t.lines"):
        engine.run(range(4), max_epochs=1)
    epoch_lines = [r.getMessage() for r in caplog.records if r.name == "t.lines" and " took " in r.getMessage()]
    assert len(epoch_lines) == 1
    assert epoch_lines[0].startswith("epoch 1/1 took ")
    assert epoch_lines[0].endswith("; last iteration: loss 1, ce 0.5, kl 0.25"), epoch_lines[0]


def test_no_terms_no_label(caplog):
    engine = Engine(lambda e, b: {"loss": torch.tensor(1.0)})
    TrainingProgress(interval_s=3600, output_transform=lambda out: {}, tty=False, name="t.none").attach(engine)
    with caplog.at_level(logging.INFO, logger="t.none"):
        engine.run(range(2), max_epochs=1)
    lines = [r.getMessage() for r in caplog.records if r.name == "t.none" and " took " in r.getMessage()]
    assert len(lines) == 1 and "iteration:" not in lines[0]
