"""A depthwise convolution whose dilated CPU gradients come from fast kernels.

oneDNN, PyTorch's CPU convolution backend, runs a dilated depthwise convolution forward as
fast as an undilated one, but its backward for the dilation-2 kernels of ``dil_conv_3x3`` /
``dil_conv_5x5`` takes dozens of times as long as the forward: a fifth of a first-order and a
third of a second-order search step on the CPU (``python benchmarks/bench_vs_textbook.py --ops``
measures each conv). The same numbers come from fast kernels by regrouping the sums:

* stride == dilation (the strided ``dil_conv`` of a reduction cell) only ever reads every
  d-th pixel: it is the undilated convolution of ``x[..., ::d, ::d]`` with padding ``p / d``;
* grad_input of a stride-1 "same" convolution is the same convolution of grad_output with the
  flipped kernel: a forward kernel;
* grad_weight of a dilation-d kernel is the undilated weight gradient over the d*d interleaved
  sub-images of input and grad_output (space-to-batch);
* oneDNN's undilated weight gradient is fast for 3x3 kernels only (its 5x5 one takes 1.5-3x
  as long as the four 3x3 ones that make it up): a larger kernel's weight gradient is put
  together from 3x3 blocks, each the 3x3 weight gradient over a shifted window of the input.

The module is an ``nn.Conv2d`` (same parameter, same ``state_dict`` keys, same function);
CUDA, inference and every other configuration take the plain path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _like_format(t: Tensor, like: Tensor) -> Tensor:
    """``t`` made contiguous in the memory format of ``like`` (channels-last or not)."""
    return t.contiguous(memory_format=_format_of(like))


def _format_of(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _space_to_batch(t: Tensor, d: int) -> Tensor:
    """(N, C, H, W) -> (d*d*N, C, ceil(H/d), ceil(W/d)): the interleaved sub-images, in one copy
    and in the memory format of ``t``; the input is first zero-extended to multiples of d (the
    extension only meets zeros of the padding)."""
    fmt = _format_of(t)
    n, c, h, w = t.shape
    if h % d or w % d:
        t = F.pad(t, (0, (-w) % d, 0, (-h) % d))
        h, w = t.shape[-2:]
    out = torch.empty(d * d * n, c, h // d, w // d, dtype=t.dtype, device=t.device, memory_format=fmt)
    if fmt == torch.channels_last:  # copy in (N, H, W, C) order, C innermost on both sides
        src = t.permute(0, 2, 3, 1).reshape(n, h // d, d, w // d, d, c).permute(2, 4, 0, 1, 3, 5)
        out.permute(0, 2, 3, 1).view(d, d, n, h // d, w // d, c).copy_(src)
    else:
        out.view(d, d, n, c, h // d, w // d).copy_(t.reshape(n, c, h // d, d, w // d, d).permute(3, 5, 0, 1, 2, 4))
    return out


class _SameDepthwiseConv(torch.autograd.Function):
    """Stride-1 dilated depthwise conv with 'same' padding ``d * (k - 1) / 2``, fast CPU gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, dilation: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.dilation = dilation
        k = weight.shape[-1]
        return F.conv2d(x, weight, None, 1, dilation * (k - 1) // 2, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        d, k, c = ctx.dilation, weight.shape[-1], weight.shape[0]
        pad = d * (k - 1) // 2
        grad_out = _like_format(grad_out, x)
        # Under autocast the forward ran in a lower precision: compute the gradients in the
        # dtype of grad_out (autograd casts them back to the dtypes of x and weight).
        x, weight = x.to(grad_out.dtype), weight.to(grad_out.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad_out, weight.flip(2, 3), None, 1, pad, d, c)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(_space_to_batch(x, d), _space_to_batch(grad_out, d), k, 1, (k - 1) // 2)
        return grad_x, grad_w, None


def _weight_grad(x: Tensor, grad_out: Tensor, k: int, stride: int, padding: int) -> Tensor:
    """dL/dweight of an undilated k x k depthwise convolution (square kernel and padding).

    Above 3x3, from ``ceil(k / 3) ** 2`` blocks: block (a, b) of the kernel is the 3x3 weight
    gradient over the input window that starts at (a, b) of the padded input."""
    c = x.shape[1]
    if k <= 3:
        return torch.ops.aten.convolution_backward(
            grad_out, x, x.new_empty(c, 1, k, k), None, [stride] * 2, [padding] * 2, [1, 1], False, [0, 0], c,
            [False, True, False])[1]
    starts = range(0, k, 3)
    (h, w), (ho, wo) = x.shape[-2:], grad_out.shape[-2:]
    span_h, span_w = stride * (ho - 1) + 3, stride * (wo - 1) + 3
    pad_bottom, pad_right = max(0, starts[-1] + span_h - h - padding), max(0, starts[-1] + span_w - w - padding)
    x_pad = _like_format(F.pad(x, (padding, pad_right, padding, pad_bottom)), x)
    block = x.new_empty(c, 1, 3, 3)
    rows = []
    for a in starts:
        rows.append(torch.cat([torch.ops.aten.convolution_backward(
            grad_out, x_pad[:, :, a:a + span_h, b:b + span_w], block, None, [stride] * 2, [0, 0], [1, 1],
            False, [0, 0], c, [False, True, False])[1] for b in starts], dim=3))
    return torch.cat(rows, dim=2)[:, :, :k, :k].contiguous()


class _UndilatedDepthwiseConv(torch.autograd.Function):
    """Undilated depthwise conv (any stride) whose weight gradient comes from :func:`_weight_grad`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: int, padding: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        s, p, k, c = ctx.stride, ctx.padding, weight.shape[-1], weight.shape[0]
        grad_out = _like_format(grad_out, x)
        x, weight = x.to(grad_out.dtype), weight.to(grad_out.dtype)  # see _SameDepthwiseConv
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], c, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, grad_out, k, s, p)
        return grad_x, grad_w, None, None


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(C, C, k, stride, padding, dilation, groups=C, bias=False)`` with fast CPU gradients
    (dilated kernels, and kernels above 3x3)."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1):
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or not torch.is_grad_enabled() or not (x.requires_grad or self.weight.requires_grad):
            return super().forward(x)
        (k, _), (s, _), (p, _), (d, _) = self.kernel_size, self.stride, self.padding, self.dilation
        if s == d > 1 and p % d == 0:
            x, s, p, d = x[:, :, ::d, ::d], 1, p // d, 1
        if s == 1 and d > 1 and k % 2 and p == d * (k - 1) // 2:
            return _SameDepthwiseConv.apply(x, self.weight, d)
        if d == 1 and k > 3 and self.kernel_size[0] == self.kernel_size[1] and self.padding[0] == self.padding[1]:
            return _UndilatedDepthwiseConv.apply(x, self.weight, s, p)
        return F.conv2d(x, self.weight, None, s, p, d, self.groups)
