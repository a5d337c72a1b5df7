"""``[ReLU] -> depthwise conv -> 1x1 conv -> BatchNorm`` as one autograd function on native kernels.

Every convolutional candidate op of the search is made of this chain (``dil_conv``: one,
``sep_conv``: two, the second reading the first through a ReLU; a cell's ``ReLUConvBN``
preprocessing: the chain without the depthwise conv). The search's BatchNorm has no affine
parameters and normalises with batch statistics, so in training the chain's output depends on
its input and two weights alone: one forward call, one backward call, no autograd node per
layer and no tensor in between that the backward does not need (it keeps the input, the
depthwise output and the normalised output, as the layer-by-layer graph does).

:func:`conv_bn_chain` returns None where the chain does not apply (GPU, eval mode, affine or
cumulative-average BatchNorm, autocast, other dtypes, no kernels); the caller then runs its
modules as usual. A backward that must itself be differentiable (``--hessian exact``, run under
``create_graph=True``) recomputes the chain with PyTorch's ops and differentiates that.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairdarts.search_space import native

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
CL = torch.channels_last


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _geometry(dw: nn.Conv2d | None) -> tuple[int, int, int, int]:
    """(kernel, stride, padding, dilation) of a square depthwise conv; (1, 1, 0, 1) without one."""
    if dw is None:
        return 1, 1, 0, 1
    return dw.kernel_size[0], dw.stride[0], dw.padding[0], dw.dilation[0]  # type: ignore[return-value]


def _square(conv: nn.Conv2d) -> bool:
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return k[0] == k[1] and s[0] == s[1] and p[0] == p[1] and d[0] == d[1] and not isinstance(p, str)  # type: ignore


def applicable(x: Tensor, dw: nn.Conv2d | None, pw: nn.Conv2d, bn: nn.BatchNorm2d) -> bool:
    """The chain computes exactly what the modules compute on ``x``, and kernels are loaded."""
    if x.device.type != "cpu" or x.dtype not in _SUFFIX or x.dim() != 4 or not bn.training:
        return False
    if bn.affine or (bn.track_running_stats and bn.momentum is None) or torch.is_autocast_enabled("cpu"):
        return False
    if pw.kernel_size != (1, 1) or pw.stride != (1, 1) or pw.padding != (0, 0) or pw.bias is not None or pw.groups != 1:
        return False
    if dw is not None and not (dw.groups == dw.in_channels == dw.out_channels and dw.bias is None and _square(dw)):
        return False
    return native.library() is not None


class _Chain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w_dw: Tensor | None, w_pw: Tensor, running_mean: Tensor | None,  # type: ignore[override]
                running_var: Tensor | None, geometry: tuple[int, int, int, int], relu: bool, momentum: float,
                eps: float) -> Tensor:
        lib = native.library()
        k, s, p, d = geometry
        n, ci, h, w = x.shape
        co = w_pw.shape[0]
        ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
        z = None if w_dw is None else torch.empty((n, ci, ho, wo), dtype=x.dtype, memory_format=CL)
        y = torch.empty((n, co, ho, wo), dtype=x.dtype, memory_format=CL)
        invstd = x.new_empty(co)
        getattr(lib, f"chain_forward_{_SUFFIX[x.dtype]}")(
            _ptr(x), _ptr(w_dw), _ptr(w_pw), _ptr(z), _ptr(y), _ptr(invstd), _ptr(running_mean), _ptr(running_var),
            momentum, eps, n, h, w, ci, ho, wo, co, k, s, p, d, int(relu))
        ctx.save_for_backward(x, w_dw, w_pw, z, y, invstd)
        ctx.geometry, ctx.relu, ctx.eps = geometry, relu, eps
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        x, w_dw, w_pw, z, y, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            grads = _differentiable_backward(x, w_dw, w_pw, gy, ctx.geometry, ctx.relu, ctx.eps, ctx.needs_input_grad)
        else:
            grads = _native_backward(x, w_dw, w_pw, z, y, invstd, gy, ctx.geometry, ctx.relu, ctx.needs_input_grad)
        return (*grads, None, None, None, None, None, None)


def _native_backward(x: Tensor, w_dw: Tensor | None, w_pw: Tensor, z: Tensor | None, y: Tensor, invstd: Tensor,
                     gy: Tensor, geometry: tuple[int, int, int, int], relu: bool,
                     needs: tuple[bool, ...]) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    k, s, p, d = geometry
    gy = gy.contiguous(memory_format=CL)
    n, ci, h, w = x.shape
    co, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    gx = torch.empty_like(x, memory_format=CL) if needs[0] else None
    g_dw = torch.empty_like(w_dw) if w_dw is not None and needs[1] else None
    g_pw = torch.empty_like(w_pw) if needs[2] else None
    getattr(native.library(), f"chain_backward_{_SUFFIX[x.dtype]}")(
        _ptr(x), _ptr(w_dw), _ptr(w_pw), _ptr(z), _ptr(y), _ptr(invstd), _ptr(gy), _ptr(gx), _ptr(g_dw),
        _ptr(g_pw), n, h, w, ci, ho, wo, co, k, s, p, d, int(relu))
    return gx, g_dw, g_pw


def _reference(x: Tensor, w_dw: Tensor | None, w_pw: Tensor, geometry: tuple[int, int, int, int], relu: bool,
               eps: float) -> Tensor:
    """The chain in PyTorch's ops, on batch statistics (no running-statistics update)."""
    k, s, p, d = geometry
    h = F.relu(x) if relu else x
    if w_dw is not None:
        h = F.conv2d(h, w_dw, None, s, p, d, w_dw.shape[0])
    return F.batch_norm(F.conv2d(h, w_pw), None, None, training=True, eps=eps)


def _differentiable_backward(x: Tensor, w_dw: Tensor | None, w_pw: Tensor, gy: Tensor,
                             geometry: tuple[int, int, int, int], relu: bool, eps: float,
                             needs: tuple[bool, ...]) -> list[Tensor | None]:
    inputs = [t for t, need in zip((x, w_dw, w_pw), needs) if need and t is not None]
    with torch.enable_grad():
        out = _reference(x, w_dw, w_pw, geometry, relu, eps)
        got = iter(torch.autograd.grad(out, inputs, gy, create_graph=True, allow_unused=True))
    return [next(got) if need and t is not None else None for t, need in zip((x, w_dw, w_pw), needs)]


def conv_bn_chain(x: Tensor, dw: nn.Conv2d | None, pw: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool) -> Tensor | None:
    """``bn(pw(dw(relu(x))))`` on the native kernels (training mode, batch statistics), updating
    ``bn``'s running statistics as ``nn.BatchNorm2d`` does; None where it does not apply."""
    if not applicable(x, dw, pw, bn):
        return None
    track = bn.track_running_stats and bn.running_mean is not None
    momentum = float(bn.momentum) if bn.momentum is not None else 0.0
    # Contiguous copies (if any) are made here, in the graph: the differentiable backward needs
    # the function's inputs to be the tensors autograd knows.
    x = x.contiguous(memory_format=CL)
    y = _Chain.apply(x, None if dw is None else dw.weight.contiguous(), pw.weight.contiguous(), bn.running_mean if track else None,
                     bn.running_var if track else None, _geometry(dw), relu, momentum, float(bn.eps))
    if track and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return y

