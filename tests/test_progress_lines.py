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


def test_time_left_after_a_resume_counts_the_epochs_of_this_run(caplog):
    """A resumed run (its epoch restored at STARTED, after this handler's own STARTED) estimates the time left from
    the epochs it ran itself, not from every epoch since 0 (which made it 8x too short after 7 of 30 epochs)."""
    import re
    import time

    from ignite.engine import Events

    engine = Engine(lambda e, b: time.sleep(0.2) or {"loss": torch.tensor(1.0)})
    TrainingProgress(interval_s=3600, output_transform=lambda out: {}, tty=False, name="t.resume").attach(engine)

    def restore(e: Engine) -> None:  # what LastCheckpoint.load does on --resume
        e.state.epoch, e.state.iteration = 7, 7 * 2

    engine.add_event_handler(Events.STARTED, restore)
    with caplog.at_level(logging.INFO, logger="t.resume"):
        engine.run(range(2), max_epochs=9)
    lines = [r.getMessage() for r in caplog.records if r.name == "t.resume" and " took " in r.getMessage()]
    first = lines[0]
    assert first.startswith("epoch 8/9 took "), lines
    took, left = (float(v) for v in re.findall(r"([0-9.]+) s", first)[:2])
    assert left > 0.5 * took, first  # one epoch left, at about this epoch's pace (was about an eighth of it)
