"""The native 3x3 pooling of the search (``max_pool_3x3``, ``avg_pool_3x3``) against PyTorch's:
outputs and gradients in float64, ties and NaN by PyTorch's rules, the double backward of
``--hessian exact``, and the module setups it declines."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fairdarts.search_space import native
from fairdarts.search_space.native.pool import pool3x3, pool_supported

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(native.library() is None, reason=f"no native kernels: {native.unavailable_reason()}")]

POOLS = {"max": lambda s: nn.MaxPool2d(3, stride=s, padding=1),
         "avg": lambda s: nn.AvgPool2d(3, stride=s, padding=1, count_include_pad=False)}


def _both(pool: nn.Module, x0: torch.Tensor, gy_seed: int = 2):
    out = []
    for use_native in (True, False):
        x = x0.clone().requires_grad_()
        y = pool3x3(pool, x) if use_native else pool(x)
        assert y is not None
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(gy_seed), dtype=y.dtype))
        out.append((y.detach(), x.grad))
    return out


@pytest.mark.parametrize("kind", POOLS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", [(3, 8, 9, 9), (2, 6, 8, 7), (4, 16, 4, 4)], ids=["odd", "ragged", "small"])
def test_pool_equals_pytorch_float64(kind, stride, shape) -> None:
    x0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x0 = x0.contiguous(memory_format=torch.channels_last)
    (y, gx), (y_ref, gx_ref) = _both(POOLS[kind](stride), x0)
    assert y.shape == y_ref.shape
    assert torch.allclose(y, y_ref, rtol=1e-12, atol=1e-14) and torch.allclose(gx, gx_ref, rtol=1e-12, atol=1e-14)


def test_max_pool_ties_and_nan_follow_pytorch() -> None:
    """Equal values in a window: the gradient goes to the first of them; a NaN is the maximum."""
    x0 = torch.zeros(2, 8, 6, 6, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x0[1, 3, 2, 2] = float("nan")
    (y, gx), (y_ref, gx_ref) = _both(POOLS["max"](1), x0)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref)) and torch.isnan(y).any()
    assert torch.equal(y.nan_to_num(), y_ref.nan_to_num()) and torch.equal(gx, gx_ref)


def test_float32_and_nchw_inputs() -> None:
    x0 = torch.randn(4, 8, 10, 10, generator=torch.Generator().manual_seed(3))  # NCHW: copied to channels-last
    for kind in POOLS:
        (y, gx), (y_ref, gx_ref) = _both(POOLS[kind](2), x0)
        assert torch.allclose(y, y_ref, atol=1e-6) and torch.allclose(gx, gx_ref, atol=1e-6)


def test_double_backward_goes_through_pytorch() -> None:
    """Under create_graph the pooling's gradient is PyTorch's own, differentiable in the output gradient."""
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64, requires_grad=True)
    for kind in POOLS:
        pool = POOLS[kind](1)
        ours = pool3x3(pool, x)
        assert ours is not None
        gy = torch.randn(ours.shape, dtype=torch.float64, requires_grad=True)
        (g1,) = torch.autograd.grad(ours, x, gy, create_graph=True)
        (g2,) = torch.autograd.grad(pool(x), x, gy, create_graph=True)
        (h1,) = torch.autograd.grad(g1.square().sum(), gy)
        (h2,) = torch.autograd.grad(g2.square().sum(), gy)
        assert torch.allclose(g1, g2) and torch.allclose(h1, h2)


@pytest.mark.parametrize("pool", [
    nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), nn.MaxPool2d(2, stride=2),
    nn.MaxPool2d(3, stride=1, padding=1, dilation=2), nn.AvgPool2d(3, stride=1, padding=1),
    nn.AvgPool2d(3, stride=3, padding=1, count_include_pad=False), nn.Identity(),
], ids=["ceil", "2x2", "dilated", "count-pad", "stride3", "not-a-pool"])
def test_other_setups_are_declined(pool) -> None:
    assert not pool_supported(pool)
    assert pool3x3(pool, torch.randn(1, 8, 6, 6)) is None
    assert pool3x3(POOLS["max"](1), torch.randn(1, 8, 6, 6, dtype=torch.float16)) is None
