"""The search step captured as one CUDA graph and replayed (``--cuda_graphs``).

On a GPU a search step of the supernet is thousands of small kernels (every candidate op of
every edge, forward and backward, for the architecture step and the weight step, and the
optimizer updates of ~900 tensors); launching them one by one from Python costs more than
running them, so the step time hardly grows with the batch. A CUDA graph records the whole
step once, with its architecture step (first or second order), the weight step with gradient
clipping and both optimizer updates, and replays it with one launch.

What capture needs, and how this module provides it:

* fixed input buffers: each batch is copied into them before a replay;
* fixed output tensors: the losses and hits a replay writes are cloned out after it;
* optimizer state that exists before capture: the first steps run eagerly, on a side stream as
  PyTorch's documentation prescribes; Adam keeps its step count on the device
  (``capturable=True``, see :func:`fairdarts.search.searcher.build_step`);
* no host synchronisation inside the step: the non-finite check (:mod:`fairdarts.guards`) reads
  the losses after each replay; it stops the run as the eager step does (the last checkpoint
  on disk is the last good state), and ``--skip_nonfinite``, which must decide before the
  update, keeps the eager step;
* constants baked in at capture, the learning rate among them: the graph is captured again when
  the weight learning rate changes (once per epoch under the cosine schedule).

Elsewhere the eager step runs and the reason is logged once: not a CUDA device, a data-parallel
run (its all-reduces are not captured here), ``--skip_nonfinite``, or a capture that failed. A
batch of another shape (a last, partial batch) runs eagerly too, with the same weights and
optimizer state.

The capture itself is a parameter (:data:`Capture`): :func:`capture_cuda_graph` on a GPU; tests
on the CPU pass :func:`run_eagerly`, which keeps the semantics (capturing performs one step,
a replay performs one more and refreshes the outputs), so every other line of this module runs
in the CPU test suite.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

from fairdarts.search.architect import ArchStepStats
from fairdarts.search.loop import Batch, SearchStep, StepResult

Outputs = tuple[Tensor, ...]
#: capture(fn) performs the step ``fn`` once and returns (replay, the outputs that ``fn`` returned);
#: each ``replay()`` performs the step again, writing its results into those same outputs.
Capture = Callable[[Callable[[], Outputs]], tuple[Callable[[], None], Outputs]]

#: Eager steps before the first capture (lazy initialisations: optimizer state, cuBLAS workspaces).
WARMUP_STEPS = 3


def capture_cuda_graph(fn: Callable[[], Outputs]) -> tuple[Callable[[], None], Outputs]:
    """Record ``fn`` as a CUDA graph on the current device, then replay it once (capturing runs
    nothing). ``thread_local``: a DataLoader's pin-memory thread may go on with its own CUDA calls."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        outputs = fn()
    graph.replay()
    return graph.replay, outputs


def run_eagerly(fn: Callable[[], Outputs]) -> tuple[Callable[[], None], Outputs]:
    """A stand-in for :func:`capture_cuda_graph` with the same semantics, on any device: each
    replay runs ``fn`` again and copies its results into the first call's outputs."""
    outputs = fn()

    def replay() -> None:
        for out, new in zip(outputs, fn()):
            out.copy_(new)
    return replay, outputs


def why_not_graphed(step: SearchStep, device: torch.device, skip_nonfinite: bool) -> str | None:
    """Why this run's step cannot be captured (None: it can)."""
    if device.type != "cuda":
        return f"not a CUDA device ({device})"
    if step.reduce_grads is not None or step.architect.reduce_grads is not None:
        return "a data-parallel run: its all-reduces are not captured"
    if skip_nonfinite:
        return "--skip_nonfinite decides before each update, on the host"
    return None


def graphed_or_eager(step: SearchStep, wanted: bool, device: torch.device, skip_nonfinite: bool,
                     logger: logging.Logger) -> SearchStep | GraphedSearchStep:
    """The step a run takes: graphed when asked for (``--cuda_graphs``) and possible, else ``step``
    itself, the reason logged."""
    if not wanted:
        return step
    reason = why_not_graphed(step, device, skip_nonfinite)
    if reason is not None:
        logger.info("--cuda_graphs: eager search steps (%s)", reason)
        return step
    return GraphedSearchStep(step, logger, torch.cuda.Stream(device))


class GraphedSearchStep:
    """A :class:`SearchStep` replayed from a captured graph: same call, same :class:`StepResult`.

    ``stream``: the side stream of the eager steps on a GPU (None: the current stream)."""

    def __init__(self, step: SearchStep, logger: logging.Logger, stream: torch.cuda.Stream | None = None,
                 capture: Capture = capture_cuda_graph, warmup: int = WARMUP_STEPS):
        self.step = step
        self.model = step.model
        self.single_level = step.single_level
        self.log = logger
        self.stream = stream
        self.capture = capture
        self.warmup = warmup
        self.disabled: str | None = None  # why capture failed: eager steps from then on
        self.eager_steps = self.captures = self.replays = 0
        self._shapes: tuple | None = None  # those of the first batches: the graph's
        self._lr: float | None = None      # the weight learning rate baked into the graph
        self._replay: Callable[[], None] | None = None
        self._inputs: list[Tensor] = []
        self._outputs: Outputs = ()

    def __call__(self, train_batch: Batch, arch_batch: Batch | None) -> StepResult:
        if self.disabled is not None:
            return self.step(train_batch, arch_batch)
        shapes = tuple((tuple(t.shape), t.dtype) for t in _flat(train_batch, arch_batch))
        if self._shapes is None:
            self._shapes = shapes
        if shapes != self._shapes or self.eager_steps < self.warmup:
            return self._eager(train_batch, arch_batch)
        lr = float(self.step.w_optimizer.param_groups[0]["lr"])
        if self._replay is None or lr != self._lr:
            return self._captured(lr, train_batch, arch_batch)
        return self._replayed(train_batch, arch_batch)

    # ----- the three ways to take a step ---------------------------------------------------
    def _eager(self, train_batch: Batch, arch_batch: Batch | None) -> StepResult:
        """An eager step (warm-up, or a batch of another shape), on the side stream on a GPU."""
        self.eager_steps += 1
        if self.stream is None:
            return self.step(train_batch, arch_batch)
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            result = self.step(train_batch, arch_batch)
        torch.cuda.current_stream().wait_stream(self.stream)
        return result

    def _captured(self, lr: float, train_batch: Batch, arch_batch: Batch | None) -> StepResult:
        """Capture the step for this learning rate (the capture performs the step)."""
        self._replay, self._outputs = None, ()
        self._inputs = [t.clone() for t in _flat(train_batch, arch_batch)]
        guards = self.step.guard, self.step.architect.guard
        self.step.guard = self.step.architect.guard = None  # read on the host after each replay instead
        try:
            self._replay, self._outputs = self.capture(self._static_step)
        except Exception as exc:  # noqa: BLE001 -- whatever made capture fail, the eager step still works
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.disabled = f"capture failed: {type(exc).__name__}: {first}"
        finally:
            self.step.guard, self.step.architect.guard = guards
        if self.disabled is not None:
            self.log.warning("CUDA graphs off (%s): eager search steps", self.disabled)
            return self.step(train_batch, arch_batch)
        self._lr = lr
        self.captures += 1
        if self.captures == 1:
            self.log.info("CUDA graphs on: the search step is captured and replayed (again when the lr changes)")
        return self._result()

    def _replayed(self, train_batch: Batch, arch_batch: Batch | None) -> StepResult:
        for buffer, t in zip(self._inputs, _flat(train_batch, arch_batch)):
            buffer.copy_(t, non_blocking=True)
        assert self._replay is not None
        self._replay()
        self.replays += 1
        return self._result()

    # ----- helpers ----------------------------------------------------------------------------
    def _static_step(self) -> Outputs:
        """The step on the fixed input buffers; its results as a flat tuple of tensors."""
        x, y, *arch = self._inputs
        r = self.step((x, y), (arch[0], arch[1]) if arch else None)
        return r.loss, r.correct, r.arch.loss, r.arch.ce, r.arch.zero_one

    def _result(self) -> StepResult:
        """The replay's results, cloned out of the graph's tensors (the next replay overwrites
        them), after the non-finite check that the captured step leaves out."""
        loss, correct, arch_loss, arch_ce, zero_one = (t.clone() for t in self._outputs)
        for guard, value in ((self.step.architect.guard, arch_loss), (self.step.guard, loss)):
            if guard is not None:
                guard(value)  # a non-finite loss stops the run (DivergenceError), as in the eager step
        n = len(self._inputs[1])  # the training batch's labels: the step never skips in a graph
        return StepResult(loss, correct, n, ArchStepStats(arch_loss, arch_ce, zero_one))


def _flat(train_batch: Batch, arch_batch: Batch | None) -> list[Tensor]:
    return [*train_batch, *(arch_batch if arch_batch is not None else ())]
