"""A mixed edge of the search as one autograd node: ``prev + sum_k w_k * op_k(x)`` on native kernels.

An edge of a search cell runs 7-8 candidate ops and adds their gate-weighted outputs to its
node's running sum. Layer by layer that is, per edge, an autograd node per conv op, a
multiply-add per op forward and two multiplies per op backward, and one gradient addition per
conv op into the shared ``relu(x)``: at the search's sizes these calls cost as much as the
convolutions. Here the conv ops' chains (:mod:`fairdarts.search_space.native.chain`) and the
weighted sum are one node: forward, one native call per chain and one weighted sum; backward,
the gate weight folded into each op's BatchNorm backward, the ops' input gradients added into
one buffer, the gate gradients in one pass. The other ops (pools, skips, noise, the strided
skip) are computed by their modules as before and come in as tensors.

:func:`edge_forward` returns None where the kernels do not apply; the caller then runs the
edge op by op. A differentiable backward (``create_graph=True``) recomputes the edge with
PyTorch's ops.
"""
from __future__ import annotations

import ctypes
from typing import Sequence

import torch
from torch import Tensor

from fairdarts.search_space import native
from fairdarts.search_space.native.chain import (
    CL, _SUFFIX, Stage, _ptr, _reference, backward_stages, chain_inputs, run_stages, runnable,
)


def _pointers(tensors: Sequence[Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


class _Edge(torch.autograd.Function):
    """Inputs: prev (or None), gates [n_ops], x (the ops' input, ReLU applied), the other ops'
    outputs, then the chain weights. ``plan`` per active op: ('other', index into the other
    outputs) or ('conv', chain specs, index of its first weight)."""

    @staticmethod
    def forward(ctx, plan: tuple, prev: Tensor | None, gates: Tensor, x: Tensor,  # type: ignore[override]
                n_other: int, *tensors: Tensor | None) -> Tensor:
        lib = native.library()
        others, weights = tensors[:n_other], tensors[n_other:]
        ys, saved = [], []
        for term in plan:
            if term[1] == "other":
                ys.append(others[term[2]])
                continue
            _, _, specs, w0 = term
            y, chain_saved = run_stages(lib, x, weights[w0:w0 + 2 * len(specs)], specs)
            saved += chain_saved
            ys.append(y)
        all_gates = gates.tolist()
        ws = [all_gates[term[0]] for term in plan]
        out = torch.empty_like(ys[0], memory_format=CL)
        getattr(lib, f"weighted_sum_{_SUFFIX[x.dtype]}")(
            out.data_ptr(), _ptr(prev), _pointers(ys), (ctypes.c_double * len(ws))(*ws), len(ws), out.numel())
        ctx.plan, ctx.n_other, ctx.ws, ctx.has_prev = plan, n_other, ws, prev is not None
        ctx.save_for_backward(gates, x, *ys, *saved, *weights)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        plan, n_other = ctx.plan, ctx.n_other
        tensors = ctx.saved_tensors
        gates, x = tensors[0], tensors[1]
        ys = tensors[2:2 + len(plan)]
        n_saved = 4 * sum(len(t[2]) for t in plan if t[1] == "conv")
        saved, weights = tensors[2 + len(plan):2 + len(plan) + n_saved], tensors[2 + len(plan) + n_saved:]
        needs = ctx.needs_input_grad  # plan, prev, gates, x, n_other, *others, *weights
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return _differentiable_backward(ctx, g, gates, x, tensors, needs)
        g = g.contiguous(memory_format=CL)
        lib = native.library()
        grad_gates = _gate_grads(lib, g, ys, gates, plan) if needs[2] else None
        grad_others: list[Tensor | None] = [None] * n_other
        grad_weights: list[Tensor | None] = [None] * len(weights)
        grad_x = None
        at = 0
        for term, w in zip(plan, ctx.ws):
            if term[1] == "other":
                if needs[5 + term[2]]:
                    grad_others[term[2]] = g * w
                continue
            _, _, specs, w0 = term
            n = 2 * len(specs)
            grad_x, grad_weights[w0:w0 + n] = backward_stages(
                lib, saved[at:at + 2 * n], weights[w0:w0 + n], specs, g, needs[3],
                needs[5 + n_other + w0:5 + n_other + w0 + n], w, grad_x)
            at += 2 * n
        return (None, g if ctx.has_prev and needs[1] else None, grad_gates, grad_x, None, *grad_others,
                *grad_weights)


def _gate_grads(lib, g: Tensor, ys: Sequence[Tensor], gates: Tensor, plan: tuple) -> Tensor:
    """d out / d gates: sum(g * y_k) per active op (zero for the inactive ones)."""
    sums = (ctypes.c_double * len(ys))()
    getattr(lib, f"dots_{_SUFFIX[g.dtype]}")(g.data_ptr(), _pointers(ys), len(ys), g.numel(), sums)
    grad = [0.0] * gates.numel()
    for term, value in zip(plan, sums):
        grad[term[0]] = value
    return torch.tensor(grad, dtype=gates.dtype)


def _differentiable_backward(ctx, g: Tensor, gates: Tensor, x: Tensor, tensors: Sequence[Tensor],
                             needs: Sequence[bool]) -> tuple:
    """The edge's gradients as differentiable PyTorch expressions (``create_graph=True``): each
    partial derivative on its own, since the inputs depend on each other (``x = relu(h)`` while
    a skip's output is ``h``), so autograd over all of them at once would count paths twice:
    d/d other_k = gate_k * g; d/d gate_k = sum(g * y_k); d/d x and d/d the conv weights from the
    conv ops recomputed with PyTorch's ops (neither depends on the other)."""
    plan, n_other = ctx.plan, ctx.n_other
    n_saved = 4 * sum(len(t[2]) for t in plan if t[1] == "conv")
    weights = tensors[2 + len(plan) + n_saved:]
    ys: list[Tensor] = list(tensors[2:2 + len(plan)])
    grad_others: list[Tensor | None] = [None] * n_other
    with torch.enable_grad():
        conv_part = None
        for pos, term in enumerate(plan):
            if term[1] == "other":
                if needs[5 + term[2]]:
                    grad_others[term[2]] = gates[term[0]] * g
                continue
            ys[pos] = _reference(x, weights[term[3]:term[3] + 2 * len(term[2])], term[2])
            part = gates[term[0]] * ys[pos]
            conv_part = part if conv_part is None else conv_part + part
        grad_gates = None
        if needs[2]:
            grad_gates = torch.zeros_like(gates)
            for term, y in zip(plan, ys):
                grad_gates = grad_gates.index_add(0, torch.tensor([term[0]]), (g * y).sum().reshape(1))
        candidates = [x, *weights]
        flags = [needs[3], *needs[5 + n_other:]]
        inputs = [t for t, f in zip(candidates, flags) if f and t is not None]
        got = iter(torch.autograd.grad(conv_part, inputs, g, create_graph=True, allow_unused=True)
                   if inputs and conv_part is not None else ())
        grads = [next(got) if f and t is not None else None for t, f in zip(candidates, flags)]
    return (None, g if ctx.has_prev and needs[1] else None, grad_gates, grads[0], None, *grad_others, *grads[1:])


def edge_applies(x: Tensor, gates: Tensor, bn_probe: torch.nn.BatchNorm2d) -> bool:
    """The edge can run on the kernels (``bn_probe``: one of its chains' BatchNorms); ask before
    computing the other ops, which move running statistics."""
    return runnable(x, bn_probe) and gates.dtype == x.dtype


def edge_forward(prev: Tensor | None, gates: Tensor, x_relu: Tensor,
                 terms: Sequence[tuple[int, Tensor | Sequence[Stage]]]) -> Tensor:
    """``prev + sum_k gates[k] * y_k`` where each term is (k, output tensor) for an op computed
    elsewhere or (k, stages) for a chain op run here on ``x_relu`` (check :func:`edge_applies`
    first)."""
    plan, others, weights = [], [], []
    if prev is not None:
        prev = prev.contiguous(memory_format=CL)  # copies (if any) in the graph, as for every input
    for k, term in terms:
        if isinstance(term, Tensor):
            plan.append((k, "other", len(others)))
            others.append(term.contiguous(memory_format=CL))
        else:
            specs, ws = chain_inputs(term)  # type: ignore[arg-type]
            plan.append((k, "conv", specs, len(weights)))
            weights += ws
    return _Edge.apply(tuple(plan), prev, gates, x_relu.contiguous(memory_format=CL), len(others), *others, *weights)


