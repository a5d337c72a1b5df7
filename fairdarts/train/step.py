"""One retraining step and one evaluation pass, separate from the run bookkeeping.

:class:`TrainStep` is what a benchmark times and a data-parallel run reuses: forward (with
autocast when asked), main loss + ``auxiliary_weight`` x auxiliary loss, backward over
``accum_steps`` micro-batches, gradient clipping, SGD step. Metrics stay tensors (no device
sync per step) and are summed so that ranks can all-reduce them before dividing.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def topk_correct(logits: Tensor, y: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Hits among the top-k predictions for each k (k larger than the class count counts all)."""
    kmax = min(max(ks), logits.size(1))
    pred = logits.detach().topk(kmax, dim=1).indices
    hits = pred.eq(y.unsqueeze(1))
    return [hits[:, :min(k, kmax)].any(dim=1).sum() for k in ks]


def autocast(device: torch.device, enabled: bool, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA only: CPU autocast is slower than float32 for these nets."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[dtype])


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


@torch.no_grad()
def evaluate_sums(model: nn.Module, batches: Iterable[Batch], max_steps: int | None = None,
                  amp: bool = False, amp_dtype: str = "bf16", channels_last: bool = False) -> Tensor:
    """``[cross entropy sum, top-1 hits, top-5 hits, samples]`` in eval mode (float64 on the
    model's device, so ranks all-reduce before dividing). The model is left in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for k, (x, y) in enumerate(batches):
        if max_steps is not None and k >= max_steps:
            break
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp, amp_dtype):
            logits, _ = model(x)
        c1, c5 = topk_correct(logits, y)
        sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                             c1.double(), c5.double(), torch.tensor(float(len(y)), device=device, dtype=torch.float64)])
    return sums
