"""The architecture step on tiny supernets: descent, the zero-one loss, exact gradients,
and the second-order hypergradient (finite difference vs. double backprop)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fairdarts.search.architect import Architect, ArchObjective
from fairdarts.search.loop import SearchStep
from fairdarts.search.losses import zero_one_loss
from fairdarts.search_space import DARTS_PRIMITIVES, Supernet

OPS3 = ("max_pool_3x3", "skip_connect", "sep_conv_3x3")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(gate: str = "sigmoid", primitives=OPS3, dtype=torch.float32, seed: int = 0) -> Supernet:
    """3 layers, 4 channels, 2 nodes per cell: the full maths at a few ms per step."""
    torch.manual_seed(seed)
    return Supernet(4, 10, 3, primitives, gate=gate, steps=2, multiplier=2).to(dtype)


def batch(seed: int, n: int = 8, px: int = 8, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, px, px, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


def architect(model: Supernet, lr: float = 0.1, weight: float = 0.0, **kw) -> Architect:
    return Architect(model, lr, (0.9, 0.999), 0.0, ArchObjective(weight, "l2"), **kw)


def arch_loss(model: Supernet, b, objective: ArchObjective) -> float:
    with torch.no_grad():
        return float(objective(model(b[0]), b[1], model.arch_parameters())[0])


@pytest.mark.parametrize("gate,primitives", [("sigmoid", OPS3), ("softmax", ("none",) + OPS3)])
def test_architecture_steps_lower_the_architecture_loss(gate, primitives):
    model = tiny(gate, primitives)
    arch = architect(model, lr=0.05)
    b = batch(1)
    before = arch_loss(model, b, arch.objective)
    weights_before = [p.detach().clone() for p in model.weight_parameters()]
    for _ in range(5):
        arch.step(b, b)
    assert arch_loss(model, b, arch.objective) < before - 1e-3
    assert all(torch.equal(w, p) for w, p in zip(weights_before, model.weight_parameters()))


def test_zero_one_loss_forms():
    a = [torch.tensor([[0.0, 2.0]]), torch.tensor([[-2.0, 0.0]])]
    d = torch.sigmoid(torch.tensor(2.0)) - 0.5
    assert zero_one_loss(a, "l2").item() == pytest.approx(-(2 * d ** 2 / 4).item())
    assert zero_one_loss(a, "l1").item() == pytest.approx(-(2 * d / 4).item())
    with pytest.raises(ValueError):
        zero_one_loss(a, "l3")


@pytest.mark.parametrize("sep_loss", ["l2", "l1"])
def test_zero_one_loss_pushes_gates_away_from_half(sep_loss):
    def spread(weight: float) -> float:
        model = tiny()
        arch = Architect(model, 0.1, (0.9, 0.999), 0.0, ArchObjective(weight, sep_loss))
        for k in range(12):
            b = batch(k)
            arch.step(b, b)
        gates = torch.cat([g.detach().flatten() for g in model.gated_weights()])
        return float((gates - 0.5).abs().mean())

    assert spread(10.0) > 1.25 * spread(0.0)


def test_first_order_gradients_equal_autograd_and_touch_no_weight():
    model = tiny("softmax", DARTS_PRIMITIVES)
    reference = copy.deepcopy(model)
    b = batch(2)
    grads, _ = architect(model).first_order_grads(b)
    assert all(p.grad is None for p in model.parameters())

    F.cross_entropy(reference(b[0]), b[1]).backward()
    for g, a in zip(grads, reference.arch_parameters()):
        torch.testing.assert_close(g, a.grad, rtol=1e-6, atol=1e-8)


def _trained_sgd(model: Supernet, lr: float) -> torch.optim.SGD:
    """SGD with a momentum buffer already filled (so the virtual step uses it)."""
    opt = torch.optim.SGD(model.weight_parameters(), lr, momentum=0.9, weight_decay=3e-4)
    x, y = batch(9, dtype=next(model.parameters()).dtype)
    F.cross_entropy(model(x), y).backward(inputs=list(model.weight_parameters()))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


SMOOTH_OPS = ("avg_pool_3x3", "skip_connect", "sep_conv_3x3")


@pytest.mark.parametrize("gate,primitives", [("sigmoid", SMOOTH_OPS), ("softmax", ("none",) + SMOOTH_OPS)])
def test_finite_difference_hypergradient_matches_exact_double_backprop(gate, primitives, monkeypatch,
                                                                      no_native_kernels):
    """On a smooth net (softplus for ReLU, no max pool) the central difference must match the
    exact Hessian-vector product. With ReLUs dL/dalpha jumps where an activation changes sign,
    so a difference over eps = 0.01/||v|| measures the jump, not the derivative (both agree
    to 1e-10 once eps is small enough to cross no kink). The native CPU kernels compute a real
    ReLU, so they are off here (test_native_kernels.py holds them equal to PyTorch's ops,
    exact Hessian included)."""
    softplus = F.softplus
    monkeypatch.setattr(F, "relu", lambda x, inplace=False: softplus(x))

    model = tiny(gate, primitives, torch.float64)
    opt = _trained_sgd(model, lr=0.5)  # a large xi so the implicit term matters
    train_b, arch_b = batch(3, dtype=torch.float64), batch(4, dtype=torch.float64)
    weights_before = {n: p.detach().clone() for n, p in model.named_weight_parameters()}

    weight = 10.0 if gate == "sigmoid" else 0.0
    fd = architect(model, weight=weight, unrolled=True)
    ex = architect(model, weight=weight, unrolled=True, hessian="exact")
    g_fd, _ = fd.second_order_grads(train_b, arch_b, opt)
    g_ex, _ = ex.second_order_grads(train_b, arch_b, opt)
    g_first, _ = fd.first_order_grads(arch_b)

    flat = lambda gs: torch.cat([g.flatten() for g in gs])  # noqa: E731
    fd_v, ex_v, first_v = flat(g_fd), flat(g_ex), flat(g_first)
    assert (fd_v - ex_v).norm() / ex_v.norm() < 1e-2
    # The implicit (second-order) term itself must be matched, not only the total.
    implicit_fd, implicit_ex = fd_v - first_v, ex_v - first_v
    assert implicit_ex.norm() > 0.1 * ex_v.norm()
    assert (implicit_fd - implicit_ex).norm() / implicit_ex.norm() < 1e-2
    for n, p in model.named_weight_parameters():
        assert torch.equal(p, weights_before[n]), f"live weight {n} was modified"


def test_virtual_step_follows_sgd_with_momentum_and_weight_decay():
    """w' must be exactly what the next SGD step would produce from the same gradient."""
    model = tiny(dtype=torch.float64)
    opt = _trained_sgd(model, lr=0.1)
    arch = architect(model, unrolled=True)
    names, weights = arch._weights()
    x, y = batch(5, dtype=torch.float64)
    g = torch.autograd.grad(F.cross_entropy(model(x), y), weights, allow_unused=True, materialize_grads=True)
    xi, virtual = arch._virtual_step(names, weights, g, opt)
    for w, gi in zip(weights, g):
        w.grad = gi.clone()
    opt.step()
    assert xi == 0.1
    for n, w in zip(names, weights):
        torch.testing.assert_close(virtual[n].detach(), w.detach(), rtol=0, atol=1e-12)


def test_second_order_with_zero_lr_equals_first_order():
    model = tiny("softmax", DARTS_PRIMITIVES, torch.float64)
    opt = _trained_sgd(model, lr=0.0)
    arch = architect(model, unrolled=True)
    train_b, arch_b = batch(6, dtype=torch.float64), batch(7, dtype=torch.float64)
    second, _ = arch.second_order_grads(train_b, arch_b, opt)
    first, _ = arch.first_order_grads(arch_b)
    for s, f in zip(second, first):
        torch.testing.assert_close(s, f, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("unrolled,single_level", [(False, False), (True, False), (False, True)])
def test_search_step_moves_alphas_and_weights(unrolled, single_level):
    model = tiny()
    arch = architect(model, lr=0.01, weight=10.0, unrolled=unrolled)
    opt = torch.optim.SGD(model.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    step = SearchStep(model, arch, opt, grad_clip=5.0, single_level=single_level)
    alphas = [a.detach().clone() for a in model.arch_parameters()]
    weights = [p.detach().clone() for p in model.weight_parameters()]
    r = step(batch(1), None if single_level else batch(2))
    assert r.n == 8 and torch.isfinite(r.loss) and torch.isfinite(r.arch.loss)
    assert any(not torch.equal(a, b) for a, b in zip(alphas, model.arch_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(weights, model.weight_parameters()))
    if not single_level:
        assert all(a.grad is None for a in model.arch_parameters())
