"""The bilevel loop: one search step, one epoch, one validation pass.

:class:`SearchStep` is the unit a benchmark times and a data-parallel run reuses: an
architecture step (Adam on the alphas, on an architecture batch) followed by a weight step
(SGD with gradient clipping, on a training batch); or, with ``single_level``, both
optimizers stepped on the gradients of one loss on the training batch.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairdarts.runner import replay_schedule
from fairdarts.search.architect import Architect, ArchStepStats

Batch = tuple[Tensor, Tensor]
GradReducer = Callable[[Sequence[Tensor]], None]
Guard = Callable[[Tensor], bool]  # False: skip this step (see fairdarts.guards)


class StepLike(Protocol):
    """What :func:`train_epoch` calls: a :class:`SearchStep`, or one replayed from a CUDA graph
    (:class:`fairdarts.search.graphed.GraphedSearchStep`)."""

    model: nn.Module
    single_level: bool

    def __call__(self, train_batch: Batch, arch_batch: Batch | None) -> StepResult: ...


@dataclass
class StepResult:
    loss: Tensor        # training cross entropy (detached)
    correct: Tensor     # top-1 hits on the training batch
    n: int
    arch: ArchStepStats


class SearchStep:
    """Architecture step then weight step, for given batches; state lives in the optimizers."""

    def __init__(self, model: nn.Module, architect: Architect, w_optimizer: torch.optim.Optimizer,
                 grad_clip: float, single_level: bool = False, reduce_grads: GradReducer | None = None,
                 guard: Guard | None = None):
        self.model = model
        self.architect = architect
        self.w_optimizer = w_optimizer
        self.grad_clip = grad_clip
        self.single_level = single_level
        self.reduce_grads = reduce_grads
        self.guard = guard
        self.weights = list(model.weight_parameters())

    def __call__(self, train_batch: Batch, arch_batch: Batch | None) -> StepResult:
        if self.single_level:
            return self._single_level(train_batch)
        if arch_batch is None:
            raise ValueError("the bilevel step needs an architecture batch")
        arch = self.architect.step(train_batch, arch_batch, self.w_optimizer)
        x, y = train_batch
        self.w_optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if self.guard is not None and not self.guard(loss):
            return _skipped(arch, loss)
        loss.backward(inputs=self.weights)  # no alpha gradients: the alphas moved already
        self._finish_weight_step()
        return StepResult(loss.detach(), _correct(logits, y), len(y), arch)

    def _single_level(self, batch: Batch) -> StepResult:
        """Weights and alphas on the same training batch and the same loss (``--single_level``)."""
        x, y = batch
        alphas = self.architect.alphas
        self.w_optimizer.zero_grad(set_to_none=True)
        self.architect.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss, ce, l01 = self.architect.objective(logits, y, alphas)
        if self.guard is not None and not self.guard(loss):
            return _skipped(ArchStepStats(loss.detach(), ce.detach(), l01.detach()), loss)
        loss.backward()
        if self.reduce_grads is not None:
            self.reduce_grads([a.grad for a in alphas])
        self.architect.optimizer.step()
        self._finish_weight_step()
        arch = ArchStepStats(loss.detach(), ce.detach(), l01.detach())
        return StepResult(ce.detach(), _correct(logits, y), len(y), arch)

    def _finish_weight_step(self) -> None:
        if self.reduce_grads is not None:
            self.reduce_grads([p.grad for p in self.weights if p.grad is not None])
        nn.utils.clip_grad_norm_(self.weights, self.grad_clip, foreach=True)
        self.w_optimizer.step()


def weight_optimizer(params: Iterable[Tensor], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """The weights' SGD, on multi-tensor (``foreach``) kernels on every device: the supernet has
    ~900 small weight tensors, and one Python-level update per tensor cost ~1.6x the optimizer
    step and gradient clipping together on the CPU (the same numbers either way)."""
    return torch.optim.SGD(params, lr, momentum=momentum, weight_decay=weight_decay, foreach=True)


def _skipped(arch: ArchStepStats, like: Tensor) -> StepResult:
    """A step the guard skipped: no weight update, no sample in the epoch's means."""
    zero = torch.zeros((), device=like.device)
    return StepResult(zero, zero.long(), 0, arch)


def _correct(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.detach().argmax(1) == y).sum()


@dataclass
class Meter:
    """Running sums kept as tensors: no device sync per step."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    n: int = 0

    def add(self, n: int, **values: Tensor) -> None:
        for k, v in values.items():
            v = v.detach().double()
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += n

    def means(self, per_sample: Sequence[str] = (), steps: int = 1) -> dict[str, float]:
        """``per_sample`` keys are divided by the sample count, the others by ``steps``."""
        return {k: float(v) / (self.n if k in per_sample else max(steps, 1)) for k, v in self.sums.items()}


@dataclass
class EpochStats:
    train_loss: float
    train_acc: float
    arch_loss: float
    arch_ce: float
    zero_one: float
    steps: int


def train_epoch(step: StepLike, train_batches: Iterable[Batch], arch_batches: Iterator[Batch] | None,
                max_steps: int | None = None,
                on_report: Callable[[int, dict[str, float]], None] | None = None,
                report_freq: int = 50) -> EpochStats:
    """Run search steps over one pass of ``train_batches`` (at most ``max_steps``)."""
    step.model.train()
    meter = Meter()
    steps = 0
    for train_batch in itertools.islice(train_batches, max_steps):
        arch_batch = None if step.single_level else next(arch_batches)  # type: ignore[arg-type]
        r = step(train_batch, arch_batch)
        meter.add(r.n, loss=r.loss * r.n, correct=r.correct.double(),
                  arch_loss=r.arch.loss, arch_ce=r.arch.ce, zero_one=r.arch.zero_one)
        steps += 1
        if on_report is not None and (steps % report_freq == 0):
            on_report(steps, _epoch_means(meter, steps))
    m = _epoch_means(meter, steps)
    return EpochStats(m["loss"], m["acc"], m["arch_loss"], m["arch_ce"], m["zero_one"], steps)


def _epoch_means(meter: Meter, steps: int) -> dict[str, float]:
    if not meter.n:
        return {k: math.nan for k in ("loss", "acc", "arch_loss", "arch_ce", "zero_one")}
    m = meter.means(per_sample=("loss", "correct"), steps=steps)
    return {"loss": m["loss"], "acc": 100.0 * m["correct"], "arch_loss": m["arch_loss"],
            "arch_ce": m["arch_ce"], "zero_one": m["zero_one"]}


@torch.no_grad()
def validate(model: nn.Module, batches: Iterable[Batch], max_steps: int | None = None) -> Tensor:
    """Sums ``[cross entropy, top-1 hits, samples]`` in eval mode (float64, on the model's
    device, so ranks can all-reduce them before dividing)."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=next(model.parameters()).device)
    for x, y in itertools.islice(batches, max_steps):
        logits = model(x)
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += _correct(logits, y).double()
        sums[2] += len(y)
    model.train()
    return sums


def make_scheduler(optimizer: torch.optim.Optimizer, lr: float, lr_min: float, epochs: int,
                   start_epoch: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine from ``lr`` to ``lr_min`` over ``epochs``, positioned at ``start_epoch``; step it
    after each epoch (replayed on resume: :func:`fairdarts.runner.replay_schedule`)."""
    def cosine(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=lr_min)
    return replay_schedule(optimizer, lr, cosine, start_epoch)
