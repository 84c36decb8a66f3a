"""The learning-rate plateau rule of ``vggcore.train``.

The paper divides the rate by 10 "when the validation set accuracy stopped improving". That is a rule for a net
that has started to learn: a thin net often sits at chance for several epochs first (loss ln(classes)) and then
takes off, and dividing the rate during that wait (patience 3 would divide it at epochs 4, 7 and 10) keeps it at
chance for good. So epochs without improvement are counted only after the first real improvement over chance:

* chance is the validation top-1 error of always predicting the most frequent validation class;
* the net has started to learn once its best validation top-1 error is below ``LEARNING_FRACTION`` (0.9) times
  chance, i.e. at least a tenth of chance's errors are gone (0.81 for 10 balanced classes, 0.45 for 2);
* from then on, an epoch whose top-1 error is not below the best so far is a bad epoch, and ``patience``
  consecutive bad epochs divide the rate by ``1 / factor`` (at most ``max_drops`` times), as before.

The state lives in the checkpoint's ``schedule`` dict, so a resumed run continues the same count.
"""

from __future__ import annotations

import numpy as np

LEARNING_FRACTION = 0.9


def chance_error(labels) -> float:
    """Top-1 error of always predicting the most frequent class among ``labels``."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 1.0
    return 1.0 - np.bincount(labels.astype(np.int64)).max() / labels.size


def initial_state() -> dict:
    return {"best_val_top1_err": float("inf"), "bad_epochs": 0, "lr_drops": 0, "learning": False}


def step(schedule: dict, top1: float, chance: float, patience: int, max_drops: int) -> tuple:
    """Records one epoch's validation top-1 error in ``schedule`` (in place).

    Returns ``(improved, drop)``: whether the error is a new best, and whether the rate must be divided now.
    """
    improved = top1 < schedule["best_val_top1_err"] - 1e-9
    if improved:
        schedule["best_val_top1_err"] = top1
        schedule["bad_epochs"] = 0
    if "learning" not in schedule:      # checkpoints written before this rule: judge from the best so far
        schedule["learning"] = schedule["best_val_top1_err"] < LEARNING_FRACTION * chance
    if not schedule["learning"]:
        schedule["learning"] = schedule["best_val_top1_err"] < LEARNING_FRACTION * chance
        return improved, False
    if improved:
        return True, False
    schedule["bad_epochs"] += 1
    if schedule["bad_epochs"] >= patience and schedule["lr_drops"] < max_drops:
        schedule["lr_drops"] += 1
        schedule["bad_epochs"] = 0
        return False, True
    return False, False
