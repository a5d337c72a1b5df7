"""DepthwiseConv2d computes what nn.Conv2d computes: outputs, gradients, second derivatives."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairdarts.search_space.depthwise import DepthwiseConv2d
from fairdarts.search_space.operations import DilConv, SepConv

# (kernel, dilation, stride): every depthwise conv of the search space, plus 7x7 and 5x5 strided.
CONFIGS = [(3, 1, 1), (5, 1, 1), (7, 1, 1), (3, 2, 1), (5, 2, 1), (3, 2, 2), (5, 2, 2), (5, 1, 2)]


def _reference(m: DepthwiseConv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, m.weight, None, m.stride, m.padding, m.dilation, m.groups)


@pytest.mark.parametrize("k,d,s", CONFIGS)
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_outputs_and_gradients_equal_conv2d(k: int, d: int, s: int, size: tuple[int, int], channels_last: bool) -> None:
    torch.manual_seed(k * 100 + d * 10 + s)
    m = DepthwiseConv2d(4, k, stride=s, padding=d * (k - 1) // 2, dilation=d).double()
    x = torch.randn(3, 4, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y, y_ref = m(x), _reference(m, x)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    g = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, [x, m.weight], g, create_graph=True)
    grads_ref = torch.autograd.grad(y_ref, [x, m.weight], g, create_graph=True)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # Second derivatives too: the exact-Hessian architecture step differentiates these gradients.
    second = torch.autograd.grad(sum((t * t).sum() for t in grads), [x, m.weight])
    second_ref = torch.autograd.grad(sum((t * t).sum() for t in grads_ref), [x, m.weight])
    for a, b in zip(second, second_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("k,d,s", CONFIGS[:5])
def test_only_requested_gradients(k: int, d: int, s: int) -> None:
    """Input-only and weight-only gradients (detached weight / input) match too."""
    m = DepthwiseConv2d(2, k, stride=s, padding=d * (k - 1) // 2, dilation=d).double()
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(F.conv2d(x, m.weight.detach(), None, s, m.padding, d, 2).sum(), [x])
    m.weight.requires_grad_(False)
    try:
        (gx_ours,) = torch.autograd.grad(m(x).sum(), [x])
    finally:
        m.weight.requires_grad_(True)
    torch.testing.assert_close(gx_ours, gx, rtol=0, atol=1e-12)
    (gw,) = torch.autograd.grad(_reference(m, x.detach()).sum(), [m.weight])
    (gw_ours,) = torch.autograd.grad(m(x.detach()).sum(), [m.weight])
    torch.testing.assert_close(gw_ours, gw, rtol=0, atol=1e-12)


def test_same_parameters_and_keys_as_conv2d() -> None:
    """Published checkpoints load unchanged: the ops' state_dict keys and shapes did not move."""
    ours = DilConv(8, 8, 3, 1, 2, 2)
    plain = nn.Sequential(nn.Identity(), nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False),
                          nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8))
    assert {k: v.shape for k, v in ours.op.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    sep = SepConv(8, 8, 5, 2, 2)
    assert isinstance(sep.op[1], nn.Conv2d) and sep.op[1].weight.shape == (8, 1, 5, 5)
    assert "op.5.weight" in sep.state_dict()


def test_inference_takes_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """No gradient needed (evaluation, ONNX export): the plain oneDNN forward, no custom function."""
    from fairdarts.search_space import depthwise

    def refuse(*args: object) -> None:
        raise AssertionError("the custom autograd function ran without a gradient to compute")

    monkeypatch.setattr(depthwise._SameDepthwiseConv, "apply", refuse)
    monkeypatch.setattr(depthwise._UndilatedDepthwiseConv, "apply", refuse)
    for m in (DepthwiseConv2d(4, 3, stride=1, padding=2, dilation=2), DepthwiseConv2d(4, 5, stride=1, padding=2)):
        x = torch.randn(1, 4, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(m(x), _reference(m, x))
        m.weight.requires_grad_(False)
        torch.testing.assert_close(m(x), _reference(m, x))


@pytest.mark.parametrize("k,d,s,backward", [(5, 1, 1, "_UndilatedDepthwiseConv"), (5, 1, 2, "_UndilatedDepthwiseConv"),
                                            (5, 2, 2, "_UndilatedDepthwiseConv"), (3, 2, 1, "_SameDepthwiseConv"),
                                            (5, 2, 1, "_SameDepthwiseConv")])
def test_training_takes_the_fast_gradients(k: int, d: int, s: int, backward: str) -> None:
    """The search's 5x5 and dilated convs (stride 1 and 2) record the fast backward."""
    m = DepthwiseConv2d(4, k, stride=s, padding=d * (k - 1) // 2, dilation=d)
    y = m(torch.randn(2, 4, 8, 8))
    assert backward in type(y.grad_fn).__name__


def test_search_cell_gradients_unchanged_by_fast_path() -> None:
    """A whole supernet in float64 gives the same alpha and weight gradients with the fast
    depthwise path as with the plain nn.Conv2d forward."""
    from fairdarts.search_space import DARTS_PRIMITIVES, Supernet

    torch.manual_seed(0)
    net = Supernet(4, 10, 3, DARTS_PRIMITIVES, gate="softmax").double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    params = list(net.parameters())
    fast = torch.autograd.grad(F.cross_entropy(net(x), y), params, allow_unused=True, materialize_grads=True)
    original = DepthwiseConv2d.forward
    DepthwiseConv2d.forward = nn.Conv2d.forward  # type: ignore[method-assign]
    try:
        plain = torch.autograd.grad(F.cross_entropy(net(x), y), params, allow_unused=True, materialize_grads=True)
    finally:
        DepthwiseConv2d.forward = original  # type: ignore[method-assign]
    for a, b in itertools.zip_longest(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k,d,s", CONFIGS)
def test_gradients_under_cpu_autocast(k: int, d: int, s: int) -> None:
    """Regression: under bf16 autocast (``train.py --amp --amp_dtype bf16`` on the CPU) the fast
    dilated backward got a bf16 grad_output against an fp32 weight and raised a dtype error."""
    torch.manual_seed(0)
    m = DepthwiseConv2d(4, k, stride=s, padding=d * (k - 1) // 2, dilation=d)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    y.float().square().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert m.weight.grad is not None and m.weight.grad.dtype == torch.float32
    x_ref = x.detach().clone().requires_grad_()
    _reference(m, x_ref).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0.1, atol=0.1 * x_ref.grad.abs().max().item())
