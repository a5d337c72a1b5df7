"""``[ReLU] -> depthwise conv -> 1x1 conv -> BatchNorm`` chains as one autograd function on native kernels.

Every convolutional candidate op of the search is made of such chains (``dil_conv``: one,
``sep_conv``: two, the second reading the first through a ReLU; a cell's ``ReLUConvBN``
preprocessing: one without the depthwise conv). The search's BatchNorm has no affine
parameters and normalises with batch statistics, so in training an op's output depends on its
input and its conv weights alone: an op is one autograd node with one native call per chain
each way, and keeps only what its backward reads (per chain: the input, the depthwise output,
the normalised output), as the layer-by-layer graph does.

:func:`conv_bn_chains` returns None where the chains do not apply (GPU, eval mode, affine or
cumulative-average BatchNorm, autocast, other dtypes, no kernels); the caller then runs its
modules as usual. A backward that must itself be differentiable (``--hessian exact``, run under
``create_graph=True``) recomputes the chains with PyTorch's ops and differentiates that.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairdarts.search_space import native

_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
CL = torch.channels_last
Geometry = tuple[int, int, int, int]  # kernel, stride, padding, dilation of the depthwise conv


class Stage(NamedTuple):
    """One chain of an op: its modules and whether it reads its input through a ReLU."""

    dw: nn.Conv2d | None
    pw: nn.Conv2d
    bn: nn.BatchNorm2d
    relu: bool


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _geometry(dw: nn.Conv2d | None) -> Geometry:
    """(kernel, stride, padding, dilation) of a square depthwise conv; (1, 1, 0, 1) without one."""
    if dw is None:
        return 1, 1, 0, 1
    return dw.kernel_size[0], dw.stride[0], dw.padding[0], dw.dilation[0]  # type: ignore[return-value]


def _square(conv: nn.Conv2d) -> bool:
    k, s, p, d = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    return k[0] == k[1] and s[0] == s[1] and p[0] == p[1] and d[0] == d[1] and not isinstance(p, str)  # type: ignore


def stage_supported(stage: Stage) -> bool:
    """The modules of ``stage`` are what the kernels compute (checked once per op: module
    structure does not change)."""
    dw, pw, bn, _ = stage
    if not _batchnorm_supported(bn):
        return False
    if pw.kernel_size != (1, 1) or pw.stride != (1, 1) or pw.padding != (0, 0) or pw.bias is not None or pw.groups != 1:
        return False
    return dw is None or (dw.groups == dw.in_channels == dw.out_channels and dw.bias is None and _square(dw))


def _batchnorm_supported(bn: nn.BatchNorm2d) -> bool:
    """No affine parameters; running statistics, if any, as an exponential moving average."""
    return not bn.affine and not (bn.track_running_stats and bn.momentum is None)


def runnable(x: Tensor, bn: nn.BatchNorm2d) -> bool:
    """What may change from call to call: a CPU tensor of a supported dtype; training mode, or
    eval mode on running statistics without gradients (validation); no autocast; kernels loaded."""
    mode_ok = bn.training or (not torch.is_grad_enabled() and bn.track_running_stats and bn.running_mean is not None)
    return mode_ok and takes(x)


def takes(x: Tensor) -> bool:
    """The kernels can run on ``x``: a 4-d CPU tensor of a supported dtype, no autocast, kernels loaded."""
    return (x.device.type == "cpu" and x.dtype in _SUFFIX and x.dim() == 4
            and not torch.is_autocast_enabled("cpu") and native.library() is not None)


def applicable(x: Tensor, stages: Sequence[Stage]) -> bool:
    """The chains compute exactly what the modules compute on ``x``, and kernels are loaded."""
    return runnable(x, stages[0].bn) and all(stage_supported(s) for s in stages)


Running = tuple[Tensor | None, Tensor | None, Tensor | None]  # running mean, var, num_batches_tracked


def _forward_one(lib, x: Tensor, w_dw: Tensor | None, w_pw: Tensor, running: Running, geometry: Geometry,
                 relu: bool, momentum: float, eps: float, use_running: bool) -> tuple[Tensor | None, Tensor, Tensor]:
    """(depthwise output, normalised output, invstd) of one chain: on batch statistics, moving the
    running ones, or (``use_running``, eval mode) on the running statistics."""
    k, s, p, d = geometry
    n, ci, h, w = x.shape
    co = w_pw.shape[0]
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    z = None if w_dw is None else torch.empty((n, ci, ho, wo), dtype=x.dtype, memory_format=CL)
    y = torch.empty((n, co, ho, wo), dtype=x.dtype, memory_format=CL)
    invstd = torch.empty(co, dtype=x.dtype)
    getattr(lib, f"chain_forward_{_SUFFIX[x.dtype]}")(
        _ptr(x), _ptr(w_dw), _ptr(w_pw), _ptr(z), _ptr(y), _ptr(invstd), _ptr(running[0]), _ptr(running[1]),
        momentum, eps, n, h, w, ci, ho, wo, co, k, s, p, d, int(relu), _ptr(running[2]), int(use_running))
    return z, y, invstd


def _backward_one(lib, x: Tensor, w_dw: Tensor | None, w_pw: Tensor, z: Tensor | None, y: Tensor, invstd: Tensor,
                  gy: Tensor, geometry: Geometry, relu: bool, needs: tuple[bool, bool, bool], gscale: float = 1.0,
                  gx: Tensor | None = None) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(grad input, grad depthwise weight, grad 1x1 weight) of one chain from ``gscale * gy``; None
    where not needed. A given ``gx`` is added to (it is the one returned)."""
    k, s, p, d = geometry
    gy = gy.contiguous(memory_format=CL)
    n, ci, h, w = x.shape
    co, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    accumulate = gx is not None
    if gx is None and needs[0]:
        gx = torch.empty_like(x, memory_format=CL)
    g_dw = torch.empty_like(w_dw) if w_dw is not None and needs[1] else None
    g_pw = torch.empty_like(w_pw) if needs[2] else None
    getattr(lib, f"chain_backward_{_SUFFIX[x.dtype]}")(
        _ptr(x), _ptr(w_dw), _ptr(w_pw), _ptr(z), _ptr(y), _ptr(invstd), _ptr(gy), _ptr(gx), _ptr(g_dw),
        _ptr(g_pw), n, h, w, ci, ho, wo, co, k, s, p, d, int(relu), gscale, int(accumulate))
    return gx, g_dw, g_pw


def run_stages(lib, x: Tensor, weights: Sequence[Tensor | None], specs: tuple) -> tuple[Tensor, list[Tensor | None]]:
    """The chains of one op applied in turn to ``x``: (output, per chain its input, depthwise
    output, normalised output and invstd, for :func:`backward_stages`)."""
    saved: list[Tensor | None] = []
    h = x
    for i, spec in enumerate(specs):
        z, y, invstd = _forward_one(lib, h, weights[2 * i], weights[2 * i + 1], *spec)
        saved += [h, z, y, invstd]
        h = y
    return h, saved


def backward_stages(lib, saved: Sequence[Tensor | None], weights: Sequence[Tensor | None], specs: tuple, g: Tensor,
                    need_x: bool, need_weights: Sequence[bool], gscale: float = 1.0,
                    gx: Tensor | None = None) -> tuple[Tensor | None, list[Tensor | None]]:
    """Backward of :func:`run_stages` from ``gscale * g``: (grad of x, added into ``gx`` when
    given; grads of the weights). The input gradient between chains is always computed."""
    grads: list[Tensor | None] = [None] * len(weights)
    for i in reversed(range(len(specs))):
        x, z, y, invstd = saved[4 * i: 4 * i + 4]
        first, last = i == 0, i == len(specs) - 1
        g, grads[2 * i], grads[2 * i + 1] = _backward_one(
            lib, x, weights[2 * i], weights[2 * i + 1], z, y, invstd, g, specs[i][1], specs[i][2],  # type: ignore[arg-type]
            (need_x if first else True, need_weights[2 * i], need_weights[2 * i + 1]),
            gscale if last else 1.0, gx if first else None)
    return g, grads


class _Chains(torch.autograd.Function):
    """Inputs: x, then (depthwise weight or None, 1x1 weight) per chain; the chains' fixed
    settings and running statistics come in ``specs``."""

    @staticmethod
    def forward(ctx, specs: tuple, x: Tensor, *weights: Tensor | None) -> Tensor:  # type: ignore[override]
        h, saved = run_stages(native.library(), x, weights, specs)
        ctx.specs = specs
        ctx.save_for_backward(*saved, *weights)
        return h

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        specs = ctx.specs
        tensors = ctx.saved_tensors
        saved, weights = tensors[:4 * len(specs)], tensors[4 * len(specs):]
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return (None, *_differentiable_backward(saved[0], weights, specs, gy, needs[1:]))
        g, grads = backward_stages(native.library(), saved, weights, specs, gy, needs[1], needs[2:])
        return (None, g, *grads)


def _reference(x: Tensor, weights: Sequence[Tensor | None], specs: tuple) -> Tensor:
    """The chains in PyTorch's ops, on batch statistics (no running-statistics update)."""
    h = x
    for i, (_, (k, s, p, d), relu, _, eps, _) in enumerate(specs):
        w_dw, w_pw = weights[2 * i], weights[2 * i + 1]
        if relu:
            h = F.relu(h)
        if w_dw is not None:
            h = F.conv2d(h, w_dw, None, s, p, d, w_dw.shape[0])
        h = F.batch_norm(F.conv2d(h, w_pw), None, None, training=True, eps=eps)
    return h


def _differentiable_backward(x: Tensor, weights: Sequence[Tensor | None], specs: tuple, gy: Tensor,
                             needs: Sequence[bool]) -> list[Tensor | None]:
    candidates = [x, *weights]
    inputs = [t for t, need in zip(candidates, needs) if need and t is not None]
    with torch.enable_grad():
        out = _reference(x, weights, specs)
        got = iter(torch.autograd.grad(out, inputs, gy, create_graph=True, allow_unused=True))
    return [next(got) if need and t is not None else None for t, need in zip(candidates, needs)]


def conv_bn_chains(x: Tensor, stages: Sequence[Stage], supported: bool | None = None) -> Tensor | None:
    """The stages applied in turn to ``x`` on the native kernels (training mode, batch
    statistics), updating each BatchNorm's running statistics as ``nn.BatchNorm2d`` does; None
    where they do not apply. ``supported``: the caller's cached :func:`stage_supported` of all
    stages (None: checked here)."""
    if supported is None:
        supported = all(stage_supported(s) for s in stages)
    if not (supported and runnable(x, stages[0].bn)):
        return None
    specs, weights = chain_inputs(stages)
    # A contiguous copy (if any) is made here, in the graph: the differentiable backward needs the
    # function's inputs to be the tensors autograd knows.
    return _Chains.apply(tuple(specs), x.contiguous(memory_format=CL), *weights)


def chain_inputs(stages: Sequence[Stage]) -> tuple[tuple, list[Tensor | None]]:
    """(specs, weights) of the stages as :class:`_Chains` takes them: per stage the running
    statistics (mean, var, batch count; the kernels move them in training), geometry, ReLU,
    momentum, eps, whether to normalise with the running statistics (eval mode); then (depthwise
    weight or None, 1x1 weight) per stage."""
    specs, weights = [], []
    for dw, pw, bn, relu in stages:
        specs.append(_spec(bn, _geometry(dw), relu))
        weights += [None if dw is None else dw.weight.contiguous(), pw.weight.contiguous()]
    return tuple(specs), weights


def _spec(bn: nn.BatchNorm2d, geometry: Geometry, relu: bool, channels: slice = slice(None),
          count_batch: bool = True) -> tuple:
    """One chain's spec for :class:`_Chains`, normalising ``channels`` of ``bn`` (all of them, or
    a half of the stride-2 skip's); ``count_batch``: the chain moves the batch counter in training."""
    track = bn.track_running_stats and bn.running_mean is not None
    counter = bn.num_batches_tracked if bn.training and count_batch else None
    running = (bn.running_mean[channels], bn.running_var[channels], counter) if track else (None, None, None)
    momentum = float(bn.momentum) if bn.momentum is not None else 0.0
    return running, geometry, relu, momentum, float(bn.eps), not bn.training


def conv_bn_chain(x: Tensor, dw: nn.Conv2d | None, pw: nn.Conv2d, bn: nn.BatchNorm2d, relu: bool) -> Tensor | None:
    """One chain ``bn(pw(dw(relu?(x))))``: :func:`conv_bn_chains` with one stage."""
    return conv_bn_chains(x, (Stage(dw, pw, bn, relu),))


def factorized_reduce(x: Tensor, w_even: Tensor, w_odd: Tensor, bn: nn.BatchNorm2d, relu: bool) -> Tensor | None:
    """``bn(cat(conv_even(relu?(x)[::2, ::2]), conv_odd(relu?(x)[1::2, 1::2])))``, the stride-2 skip
    (:class:`fairdarts.search_space.operations.FactorizedReduce`), as two chains; None where the
    kernels do not apply. BatchNorm is per channel, so each half of the output is a chain with
    its own half of the statistics. The subsampling is the chain's depthwise stage with a fixed
    weight: a 1x1 tap at stride 2 for the even pixels, and for the odd ones a 3x3 tap at stride
    2 and padding 1 that reads only its last corner (pixel 2i+1; past the edge of an odd-sized
    input it reads the padding, the zero row and column PyTorch's module pads the odd half with)."""
    if not (_batchnorm_supported(bn) and runnable(x, bn)) or min(x.shape[2:]) < 2:
        return None  # a side of one pixel: the module's odd half reads an empty input and raises
    half = w_even.shape[0]
    even, odd = _subsampling_taps(x.shape[1], x.dtype)
    x = x.contiguous(memory_format=CL)
    halves = []
    for i, (tap, geometry, w) in enumerate(((even, (1, 2, 0, 1), w_even), (odd, (3, 2, 1, 1), w_odd))):
        spec = _spec(bn, geometry, relu, slice(i * half, (i + 1) * half), count_batch=i == 0)  # one batch, once
        halves.append(_Chains.apply((spec,), x, tap, w.contiguous()))
    return torch.cat(halves, dim=1)


@functools.lru_cache(maxsize=64)
def _subsampling_taps(channels: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The fixed depthwise weights of :func:`factorized_reduce`: 1x1 ones, and 3x3 with a one in the last corner."""
    even = torch.ones(channels, 1, 1, 1, dtype=dtype)
    odd = torch.zeros(channels, 1, 3, 3, dtype=dtype)
    odd[:, :, 2, 2] = 1.0
    return even, odd
