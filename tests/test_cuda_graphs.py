"""The CUDA-graph search step (``--cuda_graphs``) on the CPU: everything but the capture itself.

:func:`fairdarts.search.graphed.run_eagerly` stands in for the CUDA capture with its semantics
(capturing performs the step, a replay performs one more into the same output tensors), so the
fixed input buffers, the warm-up, the recapture when the learning rate changes, the eager steps
for batches of another shape, the cloned results, the non-finite check after a replay and the
fallbacks all run here against the eager step, bit for bit. On a CPU the flag itself falls back
to the eager step and says why.
"""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from fairdarts.errors import UserError
from fairdarts.guards import NonFiniteGuard
from fairdarts.search.config import SearchConfig
from fairdarts.search.graphed import GraphedSearchStep, graphed_or_eager, run_eagerly
from fairdarts.search.searcher import build_step, build_supernet

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
VARIANTS = {
    "fairdarts-first-order": {},
    "darts-second-order": {"gate": "softmax", "primitives": "darts", "unrolled": True, "aux_loss_weight": 0.0},
    "single-level": {"single_level": True},
}


def _step(overrides: dict, guard: NonFiniteGuard | None = None):
    cfg = dataclasses.replace(SearchConfig(init_channels=4, layers=3, batch_size=6), **overrides)
    torch.manual_seed(0)
    model = build_supernet(cfg, 10, 3, CPU).double()
    return build_step(cfg, model, guard=guard)


def _batches(steps: int, partial_at: int | None = None) -> list[tuple]:
    g = torch.Generator().manual_seed(1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)
    return [(batch(4 if k == partial_at else 6), batch(6)) for k in range(steps)]


def _state(step) -> list[torch.Tensor]:
    opt_state = [t for opt in (step.w_optimizer, step.architect.optimizer) for s in opt.state.values()
                 for t in s.values() if isinstance(t, torch.Tensor)]
    return [*step.model.state_dict().values(), *opt_state]


def _run(step, batches, lr_change_at: int) -> list:
    results = []
    for k, (train, arch) in enumerate(batches):
        if k == lr_change_at:
            for group in step_optimizer(step).param_groups:
                group["lr"] *= 0.5
        r = step(train, arch)
        results.append([r.loss, r.correct, r.arch.loss, r.arch.ce, r.arch.zero_one, torch.tensor(r.n)])
    return results


def step_optimizer(step):
    return (step.step if isinstance(step, GraphedSearchStep) else step).w_optimizer


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_replayed_steps_follow_the_eager_trajectory_bit_for_bit(variant) -> None:
    """12 steps, the lr halved before step 7 and a short batch at step 5: the graphed step gives
    the eager step's results and leaves the same weights, alphas, statistics and optimizer state;
    it captured twice (first full step after warm-up, and after the lr change)."""
    batches = _batches(12, partial_at=5)
    eager = _step(VARIANTS[variant])
    plain = _step(VARIANTS[variant])
    graphed = GraphedSearchStep(plain, logging.getLogger("test"), capture=run_eagerly, warmup=2)
    want = _run(eager, batches, lr_change_at=7)
    got = _run(graphed, batches, lr_change_at=7)
    for a, b in zip(want, got):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(a, b) for a, b in zip(_state(eager), _state(plain)))
    assert (graphed.eager_steps, graphed.captures, graphed.replays) == (3, 2, 7)


def test_results_are_copies_that_the_next_replay_leaves_alone() -> None:
    graphed = GraphedSearchStep(_step({}), logging.getLogger("test"), capture=run_eagerly, warmup=0)
    batches = _batches(3)
    first = graphed(*batches[0])
    kept = first.loss.clone()
    graphed(*batches[1])
    graphed(*batches[2])
    assert graphed.replays == 2 and torch.equal(first.loss, kept)


def test_a_non_finite_loss_in_a_replay_stops_the_run() -> None:
    """The captured step leaves the host check out; it is made on the replay's losses and stops
    the run as the eager step does."""
    guard = NonFiniteGuard(skip=False)
    graphed = GraphedSearchStep(_step({}, guard), logging.getLogger("test"), capture=run_eagerly, warmup=0)
    batches = _batches(3)
    graphed(*batches[0])
    graphed(*batches[1])
    (x, y), arch = batches[2]
    with pytest.raises(UserError, match="the loss became"):
        graphed((x * float("nan"), y), arch)


def test_a_failed_capture_falls_back_to_eager_steps_once(caplog) -> None:
    calls = []

    def failing(fn):
        calls.append(fn)
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    batches = _batches(4)
    eager = _step({})
    graphed = GraphedSearchStep(_step({}, NonFiniteGuard(False)), logging.getLogger("test"), capture=failing,
                                warmup=1)
    with caplog.at_level(logging.WARNING, logger="test"):
        got = [graphed(*b).loss for b in batches]
    want = [eager(*b).loss for b in batches]
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert len(calls) == 1 and graphed.disabled is not None and "RuntimeError" in graphed.disabled
    assert graphed.step.guard is not None and graphed.step.architect.guard is not None  # restored
    assert sum("CUDA graphs off" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("wanted,device,skip,reason", [
    (True, CPU, False, "not a CUDA device (cpu)"),
    (True, torch.device("cuda"), True, "--skip_nonfinite"),
    (False, torch.device("cuda"), False, None),
], ids=["cpu", "skip-nonfinite", "not-asked"])
def test_where_graphs_do_not_apply_the_eager_step_runs(wanted, device, skip, reason, caplog) -> None:
    step = _step({})
    with caplog.at_level(logging.INFO, logger="test"):
        chosen = graphed_or_eager(step, wanted, device, skip, logging.getLogger("test"))
    assert chosen is step
    messages = [r.message for r in caplog.records]
    assert (reason is None and not messages) or any(reason in m for m in messages)


def test_the_flag_on_a_cpu_search_logs_why_and_searches(tmp_path) -> None:
    from fairdarts.search.cli import main
    run = tmp_path / "run"
    assert main(["--dataset", "synthetic", "--image_size", "8", "--subset", "24", "--batch_size", "6",
                 "--init_channels", "4", "--layers", "3", "--device", "cpu", "--epochs", "1",
                 "--max_steps_per_epoch", "2", "--cuda_graphs", "--save", str(run)]) == 0
    log = (run / "log.txt").read_text()
    assert "--cuda_graphs: eager search steps (not a CUDA device (cpu))" in log
