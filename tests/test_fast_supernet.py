"""The fast supernet computes what the reference supernet computes.

``tests/reference_supernet.py`` is a frozen copy of the supernet before the speed work of
issue 12 (itself equal to the official code to ~1e-15, see test_textbook_equivalence.py).
Every speed change to :mod:`fairdarts.search_space.supernet` must keep, in float64: logits,
losses, weight gradients, first-order alpha gradients and second-order hypergradients, BatchNorm
running statistics, eval-mode logits, and a 20-step search trajectory.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairdarts.ablations.noise import add_skip_noise
from fairdarts.search.architect import Architect, ArchObjective
from fairdarts.search.loop import SearchStep
from fairdarts.search_space import DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES, Supernet
from tests import reference_supernet

pytestmark = pytest.mark.usefixtures("one_thread")

CASES = [
    pytest.param("sigmoid", FAIRDARTS_PRIMITIVES, id="sigmoid-fairdarts"),
    pytest.param("softmax", DARTS_PRIMITIVES, id="softmax-darts"),
    pytest.param("sigmoid", DARTS_PRIMITIVES, id="sigmoid-darts"),
]


def pair(gate: str, primitives: tuple[str, ...], noise: bool = False, layers: int = 3,
         steps: int = 4) -> tuple[nn.Module, nn.Module]:
    """(fast, reference) float64 supernets with identical weights, alphas and buffers."""
    torch.manual_seed(0)
    fast = Supernet(4, 10, layers, primitives, gate=gate, steps=steps, multiplier=steps).double()
    ref = reference_supernet.Supernet(4, 10, layers, primitives, gate=gate, steps=steps,
                                      multiplier=steps).double()
    with torch.no_grad():
        for a in fast.arch_parameters():
            a.normal_(0.0, 0.5)  # gates away from their initial ties
    ref.load_state_dict(fast.state_dict())
    if noise:
        for m in (fast, ref):
            for skip in add_skip_noise(m, "N"):  # type: ignore[arg-type]
                skip.scale = 0.3
    return fast, ref


def batch(seed: int, n: int = 6, px: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, px, px, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (n,), generator=g))


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    fa = torch.cat([t.detach().flatten() for t in a])
    fb = torch.cat([t.detach().flatten() for t in b])
    scale = fb.abs().max().item()
    return (fa - fb).abs().max().item() / scale if scale > 0 else (fa - fb).abs().max().item()


def forward_backward(model: nn.Module, b, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the noise ablation draws its noise here
    logits = model(b[0])
    F.cross_entropy(logits, b[1]).backward()
    return logits, [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@pytest.mark.parametrize("noise", [False, True], ids=["plain", "skip-noise"])
@pytest.mark.parametrize("gate,primitives", CASES)
def test_logits_gradients_and_running_stats_equal_the_reference(gate, primitives, noise) -> None:
    fast, ref = pair(gate, primitives, noise)
    b = batch(1)
    logits_f, grads_f = forward_backward(fast, b, seed=7)
    logits_r, grads_r = forward_backward(ref, b, seed=7)
    assert rel_err([logits_f], [logits_r]) < 1e-10
    assert rel_err(grads_f, grads_r) < 1e-10          # weights and both alphas (normal, reduce)
    buffers_f, buffers_r = dict(fast.named_buffers()), dict(ref.named_buffers())
    assert buffers_f.keys() == buffers_r.keys()
    assert rel_err(list(buffers_f.values()), list(buffers_r.values())) < 1e-12
    fast.eval(), ref.eval()
    with torch.no_grad():
        assert rel_err([fast(b[0])], [ref(b[0])]) < 1e-10


def test_state_dict_keys_are_unchanged() -> None:
    fast, ref = pair("softmax", DARTS_PRIMITIVES)
    assert list(fast.state_dict()) == list(ref.state_dict())


def _search(model: nn.Module, unrolled: bool, steps: int) -> list[torch.Tensor]:
    w_opt = torch.optim.SGD(model.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, 3e-3, (0.5, 0.999), 1e-3, ArchObjective(10.0), unrolled=unrolled)
    step = SearchStep(model, architect, w_opt, grad_clip=5.0)
    for i in range(steps):
        step(batch(100 + i), batch(200 + i))
    return [t.detach().clone() for t in model.state_dict().values()]


@pytest.mark.parametrize("gate,primitives,unrolled", [
    pytest.param("sigmoid", FAIRDARTS_PRIMITIVES, False, id="fairdarts-1st"),
    pytest.param("softmax", DARTS_PRIMITIVES, True, id="darts-2nd"),
])
def test_twenty_step_search_trajectory_equals_the_reference(gate, primitives, unrolled) -> None:
    """Alphas, weights and running statistics after 20 bilevel steps (second order: the
    finite-difference hypergradient) agree with the reference to 1e-8."""
    fast, ref = pair(gate, primitives, layers=3, steps=2)
    final_f = _search(fast, unrolled, 20)
    final_r = _search(ref, unrolled, 20)
    for a, b in zip(final_f, final_r):  # atol: running means that are zero up to rounding
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


def test_shared_pool_work_keeps_each_edges_running_statistics() -> None:
    """Each pool BatchNorm of the edges leaving one state still counts its own batches."""
    fast, _ = pair("sigmoid", FAIRDARTS_PRIMITIVES)
    fast(batch(3)[0])
    fast(batch(4)[0])
    pool_bns = [m[1] for m in fast.modules()
                if isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[1], nn.BatchNorm2d)
                and isinstance(m[0], (nn.MaxPool2d, nn.AvgPool2d))]
    assert pool_bns and all(int(bn.num_batches_tracked) == 2 for bn in pool_bns)
    assert all(not torch.equal(bn.running_var, torch.ones_like(bn.running_var)) for bn in pool_bns)
