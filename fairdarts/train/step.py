"""One retraining step, separate from the run bookkeeping.

:class:`TrainStep` is what a benchmark times and a data-parallel run reuses: forward (with
autocast when asked), main loss + ``auxiliary_weight`` x auxiliary loss, backward over
``accum_steps`` micro-batches, gradient clipping, SGD step. Metrics stay tensors (no device
sync per step) and are summed so that ranks can all-reduce them before dividing.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairdarts.metrics import autocast, topk_correct

Batch = tuple[Tensor, Tensor]


@dataclass
class StepResult:
    loss: Tensor        # sum over the batch of the main cross entropy (detached)
    correct1: Tensor
    correct5: Tensor
    n: int


class TrainStep:
    """Forward, backward and SGD step on one (global per rank) batch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, auxiliary_weight: float,
                 grad_clip: float, label_smoothing: float = 0.0, accum_steps: int = 1,
                 amp: bool = False, amp_dtype: str = "bf16", channels_last: bool = False,
                 guard: Callable[[Tensor], bool] | None = None):
        self.model = model
        self.optimizer = optimizer
        self.auxiliary_weight = auxiliary_weight
        self.grad_clip = grad_clip
        self.label_smoothing = label_smoothing
        self.accum_steps = accum_steps
        self.amp, self.amp_dtype = amp, amp_dtype
        self.channels_last = channels_last
        self.guard = guard  # False for a non-finite loss: skip the step (fairdarts.guards)
        self.device = next(model.parameters()).device
        use_scaler = amp and amp_dtype == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.params = [p for p in model.parameters() if p.requires_grad]

    def loss(self, logits: Tensor, logits_aux: Tensor | None, y: Tensor) -> tuple[Tensor, Tensor]:
        """(training loss, main cross entropy); the auxiliary head only adds to the former."""
        ce = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        total = ce
        if logits_aux is not None and self.auxiliary_weight > 0:
            total = total + self.auxiliary_weight * F.cross_entropy(
                logits_aux.float(), y, label_smoothing=self.label_smoothing)
        return total, ce

    def __call__(self, batch: Batch) -> StepResult:
        x, y = batch
        if len(y) < 2:  # BatchNorm in training mode cannot normalise one image: no step (see build_data)
            none = torch.zeros((), dtype=torch.long, device=self.device)
            return StepResult(torch.zeros((), device=self.device), none, none.clone(), 0)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=self.device)
        c1 = torch.zeros((), dtype=torch.long, device=self.device)
        c5 = torch.zeros((), dtype=torch.long, device=self.device)
        # Strided micro-batches: micro-batch i of one process holds what rank i of a
        # ``torchrun`` run with the same global batch holds (the loaders interleave ranks).
        # A short last batch is cut into fewer micro-batches, of 2 images at least: BatchNorm in
        # training mode cannot normalise one (--accum_steps is checked against the full batch).
        k = max(1, min(self.accum_steps, len(y) // 2))
        chunks = [(x[i::k], y[i::k]) for i in range(k)]
        for i, (xc, yc) in enumerate(chunks):
            last = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                with autocast(self.device, self.amp, self.amp_dtype):
                    logits, logits_aux = self.model(xc)
                total, ce = self.loss(logits, logits_aux, yc)
                if self.guard is not None and not self.guard(total):
                    self.optimizer.zero_grad(set_to_none=True)
                    return StepResult(torch.zeros_like(loss_sum), torch.zeros_like(c1), torch.zeros_like(c5), 0)
                # Each micro-batch weighs by its share of the batch: the sum is the batch mean.
                self.scaler.scale(total * (len(yc) / len(y))).backward()
            loss_sum += ce.detach() * len(yc)
            h1, h5 = topk_correct(logits, yc)
            c1 += h1
            c5 += h5
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return StepResult(loss_sum, c1, c5, len(y))
