"""Learning-rate schedules of stage one, as pure functions of the (fractional) epoch.

The trainer sets the lr before every step from ``lr_at(step / steps_per_epoch, ...)``, so the
schedule has no state of its own: resuming at step k gives exactly the lr an uninterrupted run
has at step k. At integer epochs the values equal those of the LDAM-DRW reference
(``adjust_learning_rate`` called once per epoch):

- warm-up (both schedules): for e < warmup_epochs, lr(e) = base * min(1, (e + 1) / warmup_epochs),
  i.e. base/5, 2*base/5, ..., base at epochs 0..4 for a 5-epoch warm-up;
- multistep: base * gamma ** (number of milestones <= e);
- cosine: base * (1 + cos(pi * (e - w) / (epochs - w))) / 2 after the warm-up w, so
  lr(w) = base and lr(epochs) = 0.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from ltpipe.utils import LtpipeError, cosine_decay


def lr_at(epoch: float, *, base_lr: float, epochs: int, schedule: str = "multistep",
          milestones: Sequence[float] = (), gamma: float = 0.1,
          warmup_epochs: float = 0) -> float:
    """Learning rate at fractional epoch ``epoch`` (0 = first step of training)."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * min(1.0, (epoch + 1.0) / warmup_epochs)
    if schedule == "multistep":
        return base_lr * gamma ** bisect.bisect_right(list(milestones), epoch)
    if schedule == "cosine":
        span = epochs - warmup_epochs
        progress = 1.0 if span <= 0 else min(1.0, (epoch - warmup_epochs) / span)
        return cosine_decay(progress, base_lr)
    raise LtpipeError(f"unknown lr schedule {schedule!r}: expected 'multistep' or 'cosine'; "
                      "fix the recipe's 'schedule'")


def recipe_lr(recipe: dict, step: int, steps_per_epoch: int) -> float:
    """The lr of global step ``step`` (0-based) under a normalized stage-one recipe."""
    return lr_at(step / steps_per_epoch, base_lr=recipe["lr"], epochs=recipe["epochs"],
                 schedule=recipe["schedule"], milestones=recipe["milestones"],
                 gamma=recipe["gamma"], warmup_epochs=recipe["warmup_epochs"])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
