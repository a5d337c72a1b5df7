"""Where the search step's time goes, for ``bench_vs_textbook.py --passes --ops``.

* :func:`time_passes`: the three kinds of forward + backward pass a search step is made of,
  ``A`` (alpha gradients only, weights detached: the first-order architecture step and each
  finite-difference pass at w+ and w- of second order), ``W`` (weight gradients: the weight
  step and second order's virtual step) and ``V`` (weights and alphas: second order's
  validation pass at w'). The first-order step costs ``A + W``, DARTS' second-order step
  ``2W + V + 2A``; with ``V >= W = A + B`` their ratio is at least ``(5A + 3B) / (2A + B) >= 2.5``
  whatever B is, so no exact implementation of second order gets below 2.5x first order.
* :func:`time_depthwise`: every dilated depthwise convolution of the search space at the
  supernet's shapes, the textbook's ``nn.Conv2d(groups=C)`` against our
  :class:`~fairdarts.search_space.depthwise.DepthwiseConv2d` (what the search runs where the
  native kernels do not: on a GPU, or with ``FAIRDARTS_NATIVE_KERNELS=0``).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fairdarts.search.loop import SearchStep
from fairdarts.search_space.depthwise import DepthwiseConv2d

Batch = tuple[torch.Tensor, torch.Tensor]

#: (kernel, dilation, stride, channels, size): dil_conv_3x3 / 5x5 of the normal and reduction
#: cells at C=16/32/64 and 32/16/8 px (a stride-2 op at 8 px does not occur).
DEPTHWISE_CASES = [(k, 2, s, c, h) for k in (3, 5) for (c, h) in ((16, 32), (32, 16), (64, 8)) for s in (1, 2)
                   if not (s == 2 and h == 8)]


def median_cpu_time(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU time of this thread over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def time_passes(step: SearchStep, train: Batch, arch: Batch, repeats: int) -> dict[str, float]:
    """CPU seconds of the passes A, W, V and of the first- and second-order steps of ``step``,
    with the ratio the passes predict for second / first order and the one measured."""
    model, alphas = step.model, step.architect.alphas
    step(train, arch)  # momentum buffers, for the second-order virtual step
    named = list(model.named_weight_parameters())
    weights = [p for _, p in named]
    detached = {n: p.detach() for n, p in named}
    virtual = {n: p.detach().clone().requires_grad_() for n, p in named}
    x, y = train

    def alpha_pass() -> None:
        torch.autograd.grad(F.cross_entropy(functional_call(model, detached, (x,)), y), alphas)

    def weight_pass() -> None:
        torch.autograd.grad(F.cross_entropy(model(x), y), weights, allow_unused=True)

    def both_pass() -> None:
        loss = F.cross_entropy(functional_call(model, virtual, (x,)), y)
        torch.autograd.grad(loss, alphas + list(virtual.values()), allow_unused=True)

    def full_step(unrolled: bool) -> Callable[[], object]:
        def run() -> object:
            step.architect.unrolled = unrolled
            return step(train, arch)
        return run

    unrolled = step.architect.unrolled
    a, w, v = (median_cpu_time(f, repeats) for f in (alpha_pass, weight_pass, both_pass))
    first, second = median_cpu_time(full_step(False), repeats), median_cpu_time(full_step(True), repeats)
    step.architect.unrolled = unrolled
    return {"A_s": a, "W_s": w, "V_s": v, "first_order_s": first, "second_order_s": second,
            "predicted_ratio": (2 * w + v + 2 * a) / (a + w), "measured_ratio": second / first, "floor_ratio": 2.5}


def time_depthwise(kernel: int, dilation: int, stride: int, channels: int, size: int, batch: int,
                   repeats: int) -> dict[str, float | int]:
    """Forward + backward (input and weight gradients, channels-last) of one dilated depthwise
    convolution through ``nn.Conv2d`` and through ours, alternating call by call; the largest
    relative difference of their gradients."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(channels, kernel, stride=stride, padding=dilation * (kernel - 1) // 2, dilation=dilation)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()

    def run(forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        y = forward(conv, x)
        return torch.autograd.grad(y, [x, conv.weight], torch.ones_like(y))

    paths = {"textbook": nn.Conv2d.forward, "ours": DepthwiseConv2d.forward}
    grads = {name: run(fwd) for name, fwd in paths.items()}
    err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(grads["ours"], grads["textbook"]))
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fwd in paths.items():
            t0 = time.thread_time()
            run(fwd)
            times[name].append(time.thread_time() - t0)
    textbook_ms, ours_ms = (statistics.median(times[n]) * 1e3 for n in ("textbook", "ours"))
    return {"kernel": kernel, "dilation": dilation, "stride": stride, "channels": channels, "size": size,
            "batch": batch, "textbook_ms": textbook_ms, "ours_ms": ours_ms, "speedup": textbook_ms / ours_ms,
            "max_rel_diff": err, "repeats": repeats}
