"""The search's 3x3 pooling ops (``max_pool_3x3``, ``avg_pool_3x3``) on native kernels.

PyTorch's CPU pooling takes ~10 ns per output element at the search's sizes (a 3x3 max pool
of 32 images of 8 channels at 16 px: ~650 us); the kernels (``kernels_pool.h``) run the same
pooling over each pixel's contiguous channels, with PyTorch's rules: padding 1, a max pool's
gradient to the first maximum of its window (NaN counts as a maximum), an average over the taps
inside the image (``count_include_pad=False``).

:func:`pool3x3` returns None where they do not apply (another module setup, not the CPU, another
dtype, autocast, no kernels); the caller then runs the module. A backward that must itself be
differentiable (``--hessian exact``) recomputes the pooling with PyTorch's op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairdarts.search_space import native
from fairdarts.search_space.native.chain import CL, _SUFFIX, takes


def pool_supported(pool: nn.Module) -> bool:
    """``pool`` is a 3x3 max or average pool with padding 1 and stride 1 or 2, as the kernels compute."""
    if not isinstance(pool, (nn.MaxPool2d, nn.AvgPool2d)):
        return False

    def pair(v) -> tuple:
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if pair(pool.kernel_size) != (3, 3) or pair(pool.padding) != (1, 1) or pair(pool.stride) not in ((1, 1), (2, 2)):
        return False
    if pool.ceil_mode:
        return False
    if isinstance(pool, nn.MaxPool2d):
        return pair(pool.dilation) == (1, 1) and not pool.return_indices
    return not pool.count_include_pad and pool.divisor_override is None


class _Pool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, stride: int, avg: int) -> Tensor:  # type: ignore[override]
        n, c, h, w = x.shape
        ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
        y = torch.empty((n, c, ho, wo), dtype=x.dtype, memory_format=CL)
        getattr(native.library(), f"pool3x3_forward_{_SUFFIX[x.dtype]}")(
            x.data_ptr(), y.data_ptr(), n, h, w, c, ho, wo, stride, avg)
        ctx.stride, ctx.avg = stride, avg
        ctx.save_for_backward(x)
        return y

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: PyTorch's pooling, differentiated
            with torch.enable_grad():
                xr = x.detach().requires_grad_()
                y = (F.avg_pool2d(xr, 3, ctx.stride, 1, count_include_pad=False) if ctx.avg
                     else F.max_pool2d(xr, 3, ctx.stride, 1))
                (gx,) = torch.autograd.grad(y, xr, gy, create_graph=True)
            return gx, None, None
        gy = gy.contiguous(memory_format=CL)
        n, c, h, w = x.shape
        gx = torch.empty_like(x, memory_format=CL)
        getattr(native.library(), f"pool3x3_backward_{_SUFFIX[x.dtype]}")(
            x.data_ptr(), gy.data_ptr(), gx.data_ptr(), n, h, w, c, gy.shape[2], gy.shape[3], ctx.stride, ctx.avg)
        return gx, None, None


def pool3x3(pool: nn.Module, x: Tensor) -> Tensor | None:
    """``pool(x)`` on the kernels, or None where they do not apply."""
    if not (pool_supported(pool) and takes(x)):
        return None
    stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
    return _Pool.apply(x.contiguous(memory_format=CL), stride, int(isinstance(pool, nn.AvgPool2d)))
