"""A diverging run stops with one clear line (or skips the step) instead of training on NaNs.

A learning rate that is too high turns the loss into ``inf`` and then ``nan``; every weight it
touches becomes ``nan``, and the checkpoint written at the end of the epoch would be worthless.
The loops check each loss *before* the optimizer step that would use it:

* by default :class:`DivergenceError` stops the run, naming the epoch and step; no checkpoint
  is written after the bad step, so the last good one (if any) stays on disk;
* with ``--skip_nonfinite`` the step is skipped (no update) and the run goes on.

A loss can stay finite while weights or alphas overflow, so every checkpoint is checked before
it is written (:meth:`fairdarts.runner.EpochRun.write_state`), and so is each validation loss
(:func:`check_finite_metric`); both stop the run the same way.

Under torchrun the decision is all-reduced, so every rank skips or stops at the same step (a
rank skipping alone would leave the others waiting in a collective). The check reads one
number back from the device per step, the price of deciding before the update.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable, Iterator, TypeVar

import torch
from torch import Tensor

from fairdarts.distributed import all_reduce_sum_
from fairdarts.errors import UserError

T = TypeVar("T")


class DivergenceError(UserError):
    """The loss, the weights or the validation loss became inf or nan: the run stops before it
    writes anything of that state. The message says what happened; :class:`fairdarts.runner.EpochRun`
    adds which checkpoint its folder keeps (or that there is none) and what to do."""


def check_finite(loss: Tensor, epoch: int, step: int, skip: bool) -> bool:
    """True when ``loss`` is finite (on every rank); else False with ``skip``, else DivergenceError."""
    bad = (~torch.isfinite(loss.detach())).any().float()
    if not all_reduce_sum_(bad).item():
        return True
    if skip:
        logging.getLogger("fairdarts").warning(
            "epoch %d step %d: non-finite loss, step skipped (--skip_nonfinite)", epoch, step)
        return False
    raise DivergenceError(f"the loss became {loss.detach().float().sum().item()} at epoch {epoch} step {step}")


def check_finite_metric(name: str, value: float, epoch: int) -> None:
    """DivergenceError when ``value`` (a validation loss) is inf or nan: the weights predict
    nothing usable any more, whatever ``--skip_nonfinite`` says about single steps."""
    if not math.isfinite(value):
        raise DivergenceError(f"the {name} became {value} at epoch {epoch}")


class NonFiniteGuard:
    """:func:`check_finite` for one run's loop, which tells it where it is through :meth:`track`."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.epoch = 0
        self.step = 0

    def track(self, epoch: int, batches: Iterable[T]) -> Iterator[T]:
        """``batches``, numbering them (from 1) as the steps of ``epoch``."""
        self.epoch = epoch
        for self.step, batch in enumerate(batches, 1):
            yield batch

    def __call__(self, loss: Tensor) -> bool:
        return check_finite(loss, self.epoch, self.step, self.skip)
