"""The search supernet: every candidate op on every edge, mixed by a gate over the alphas.

* ``softmax`` gate (DARTS): the ops of an edge compete, ``softmax(alpha_edge)``.
* ``sigmoid`` gate (Fair DARTS): every op has its own independent weight ``sigmoid(alpha)``.

The mathematics is the official one (``sum_k w_k * op_k(x)`` per edge, summed per node,
the last ``multiplier`` nodes concatenated); the implementation is leaner:

* conv ops and the stride-2 skip start with a ReLU; the cell computes ``relu(h)`` once per
  node state and hands it to every such op instead of six ReLUs per edge;
* ``none`` contributes ``w * 0``: it is skipped (its alpha still gets its gradient through
  the softmax normalisation, which is computed from all alphas);
* every node is one running ``addcmul`` over all its ``w_k * op_k(h)`` terms, not a separate
  product and sum per op, edge and node;
* on the CPU the network runs channels-last: oneDNN's depthwise, pooling and BatchNorm
  kernels are several times faster in NHWC (benchmarks/bench_vs_textbook.py measured a
  search step ~3x faster than NCHW on 2 cores).
* the dilated and 5x5 depthwise convolutions take their CPU gradients from fast kernels
  (:mod:`fairdarts.search_space.depthwise`);
* the pool ops of all edges leaving one state compute the same tensor (same input, same
  stride, BatchNorm without affine parameters on batch statistics): it is computed once per
  state (:class:`EdgeSource`), which removes about two thirds of a cell's pooling and pool
  BatchNorm work;
* the gradient reaches the last cell in channels-last memory (:class:`_ChannelsLastGrad`).

``tests/reference_supernet.py`` keeps the plain formulation; ``tests/test_fast_supernet.py``
holds this one equal to it in float64 (logits, gradients, running statistics, trajectories).

Alphas are ``nn.Parameter`` s of the module (so DDP and ``state_dict`` see them), reached
through :meth:`Supernet.arch_parameters`; the op weights through :meth:`weight_parameters`.
"""
from __future__ import annotations

from typing import Callable, Iterator, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fairdarts.search_space.native.edge import edge_applies, edge_forward
from fairdarts.search_space.native.pool import pool3x3
from fairdarts.search_space.operations import RELU_LEADING_OPS, FactorizedReduce, NativeChains, ReLUConvBN, build_op
from fairdarts.search_space.topology import cell_edges, edge_input, is_reduction, num_edges

Gate = Literal["softmax", "sigmoid"]
GATES: tuple[str, ...] = ("softmax", "sigmoid")


def apply_gate(alphas: torch.Tensor, gate: str) -> torch.Tensor:
    """Gated weights: softmax over each edge's ops (DARTS) or an independent sigmoid (Fair DARTS)."""
    if gate == "softmax":
        return F.softmax(alphas, dim=-1)
    if gate == "sigmoid":
        return torch.sigmoid(alphas)
    raise ValueError(f"unknown gate {gate!r}; use one of {GATES}")


POOL_OPS = frozenset({"max_pool_3x3", "avg_pool_3x3"})


class EdgeSource:
    """A cell state as the mixed ops of the edges leaving it read it: ``h``, ``relu(h)`` and
    the pool ops' outputs, computed once per state.

    Every edge leaving a state pools the same tensor with the same stride and, in training,
    normalises it with the same batch statistics (the search's BatchNorm has no affine
    parameters), so a pool op's output is identical on all those edges. The first edge
    computes it with its own BatchNorm; every other edge reuses it and only updates its own
    running statistics from the same pooled tensor (``torch.batch_norm_update_stats``, the
    update ``BatchNorm2d`` makes, bit for bit). This removes about two thirds of a cell's
    pooling and pool BatchNorm work. In eval mode each edge normalises with its own running
    statistics; only the pooling is shared.
    """

    def __init__(self, h: torch.Tensor):
        self.h = h
        self._relu: torch.Tensor | None = None
        self._pools: dict[str, torch.Tensor] = {}
        self._normalised: dict[str, torch.Tensor] = {}

    @property
    def relu(self) -> torch.Tensor:
        """``relu(h)``, computed on first use (the last node of a cell feeds no edge)."""
        if self._relu is None:
            self._relu = F.relu(self.h)
        return self._relu

    def pooled(self, name: str, pool: nn.Module, bn: nn.BatchNorm2d) -> torch.Tensor:
        """``bn(pool(h))`` for one edge, shared with every other edge that leaves this state."""
        if name not in self._pools:
            pooled = pool3x3(pool, self.h)  # the native kernels on the CPU, where they apply
            self._pools[name] = pool(self.h) if pooled is None else pooled
        p = self._pools[name]
        if not (bn.training and _batch_statistics_only(bn)):
            return bn(p)
        if name not in self._normalised:
            self._normalised[name] = bn(p)
            return self._normalised[name]
        with torch.no_grad():
            torch.batch_norm_update_stats(p, bn.running_mean, bn.running_var, bn.momentum)  # type: ignore[arg-type]
            bn.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        return self._normalised[name]


def _batch_statistics_only(bn: nn.BatchNorm2d) -> bool:
    """In training, the output depends on the input alone (no affine parameters), and the
    running statistics follow the exponential moving average that
    ``torch.batch_norm_update_stats`` computes."""
    return (not bn.affine and bn.track_running_stats and bn.momentum is not None
            and bn.running_mean is not None and bn.num_batches_tracked is not None)


class MixedOp(nn.Module):
    """All candidate ops of one edge; output = sum of gate-weighted op outputs."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str]):
        super().__init__()
        self.primitives = tuple(primitives)
        ops = []
        for name in self.primitives:
            op = build_op(name, C, stride, affine=False, leading_relu=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            ops.append(op)
        self._ops = nn.ModuleList(ops)
        # Which ops read relu(x); which are skipped because they output zeros.
        self._reads_relu = [name in RELU_LEADING_OPS or (name == "skip_connect" and stride == 2)
                            for name in self.primitives]
        self._active = [k for k, name in enumerate(self.primitives) if name != "none"]
        self._pools = frozenset(k for k, name in enumerate(self.primitives) if name in POOL_OPS)

    def forward(self, x: torch.Tensor | EdgeSource, x_relu: torch.Tensor | None, weights: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """``out + sum_k w_k * op_k(x)``: ``out`` lets a node accumulate all its edges in one chain.

        ``x`` is a tensor (with ``x_relu = relu(x)``) or an :class:`EdgeSource`, whose pool
        outputs are shared with the other edges leaving the same state."""
        source = x if isinstance(x, EdgeSource) else None
        if source is not None:
            native = self._native_edge(source, weights, out)
            if native is not None:
                return native
            x, x_relu = source.h, source.relu
        for k in self._active:
            op = self._ops[k]
            if source is not None and k in self._pools:  # nn.Sequential(pool, BatchNorm2d)
                y = source.pooled(self.primitives[k], op[0], op[1])
            else:
                y = op(x_relu if self._reads_relu[k] else x)
            out = weights[k] * y if out is None else torch.addcmul(out, weights[k], y)
        if out is None:  # only 'none' ops on this edge: a zero tensor of the output shape
            out = weights[0] * self._ops[0](x)
        return out


    def _native_edge(self, source: EdgeSource, weights: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor | None:
        """The whole edge as one node on the native CPU kernels (:mod:`fairdarts.search_space.native.edge`),
        or None where they do not apply."""
        chains = {k: self._ops[k].native_stages() for k in self._active if isinstance(self._ops[k], NativeChains)}
        if not chains or not all(ok for _, ok in chains.values()):
            return None
        probe = next(iter(chains.values()))[0][0].bn
        if not edge_applies(source.h, weights, probe):
            return None
        terms: list[tuple[int, torch.Tensor | tuple]] = []
        for k in self._active:
            op = self._ops[k]
            if k in chains:
                terms.append((k, chains[k][0]))
            elif k in self._pools:  # nn.Sequential(pool, BatchNorm2d), shared by the edges of the state
                terms.append((k, source.pooled(self.primitives[k], op[0], op[1])))
            else:
                terms.append((k, op(source.relu if self._reads_relu[k] else source.h)))
        return edge_forward(out, weights, source.relu, terms)


class SearchCell(nn.Module):
    """A search cell: ``steps`` nodes, each the sum of mixed ops over all earlier states."""

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, primitives: Sequence[str]):
        super().__init__()
        self.reduction = reduction
        self._steps = steps
        self._multiplier = multiplier
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList(
            MixedOp(C, 2 if reduction and j < 2 else 1, primitives) for j, _ in cell_edges(steps)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        sources = [EdgeSource(h) for h in states]
        offset = 0
        for _ in range(self._steps):
            s = None
            for j, source in enumerate(sources):
                s = self._ops[offset + j](source, None, weights[offset + j], s)
            offset += len(sources)
            states.append(s)
            sources.append(EdgeSource(s))
        return torch.cat(states[-self._multiplier:], dim=1)


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands on the gradient in channels-last memory.

    Global average pooling's backward returns an NCHW gradient; reaching the last cell that
    way, every BatchNorm and convolution backward there ran oneDNN's mixed-format path, 2-4x
    slower than on a channels-last gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.contiguous(memory_format=torch.channels_last)


class Supernet(nn.Module):
    """The search network (CIFAR stem), reduction cells at 1/3 and 2/3 of the depth."""

    def __init__(self, C: int, num_classes: int, layers: int, primitives: Sequence[str],
                 gate: Gate = "sigmoid", steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, in_channels: int = 3, alpha_init: str = "auto"):
        super().__init__()
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; use one of {GATES}")
        self.C, self.num_classes, self.layers = C, num_classes, layers
        self.primitives = tuple(primitives)
        self.gate = gate
        self.steps, self.multiplier = steps, multiplier
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = is_reduction(i, layers)
            if reduction:
                C_curr *= 2
            self.cells.append(SearchCell(steps, multiplier, C_prev_prev, C_prev, C_curr,
                                         reduction, reduction_prev, self.primitives))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        shape = (num_edges(steps), len(self.primitives))
        self.alphas_normal = nn.Parameter(torch.zeros(shape))
        self.alphas_reduce = nn.Parameter(torch.zeros(shape))
        self.reset_alphas(alpha_init)

    def reset_alphas(self, init: str = "auto") -> None:
        """``zeros`` (Fair DARTS: every gate at 0.5) or ``randn`` (DARTS: 1e-3 * N(0, 1))."""
        if init == "auto":
            init = "zeros" if self.gate == "sigmoid" else "randn"
        with torch.no_grad():
            for a in self.arch_parameters():
                if init == "zeros":
                    a.zero_()
                elif init == "randn":
                    a.copy_(1e-3 * torch.randn_like(a))
                else:
                    raise ValueError(f"unknown alpha init {init!r}; use zeros or randn")

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        arch = {id(a) for a in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if not n.startswith("alphas_"))

    def gated_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(normal, reduce) gate values: what derivation reads and the plots show."""
        return apply_gate(self.alphas_normal, self.gate), apply_gate(self.alphas_reduce, self.gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal, w_reduce = self.gated_weights()
        if x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        if x.device.type == "cpu":
            s1 = _ChannelsLastGrad.apply(s1)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def map_skip_ops(self, fn: Callable[[nn.Module, int], nn.Module]) -> None:
        """Replace every ``skip_connect`` op with ``fn(op, stride)`` (used by the noise ablation)."""
        for cell in self.cells:
            for j, mixed in enumerate(cell._ops):
                if "skip_connect" in mixed.primitives:
                    k = mixed.primitives.index("skip_connect")
                    stride = 2 if cell.reduction and edge_input(j, self.steps) < 2 else 1
                    mixed._ops[k] = fn(mixed._ops[k], stride)
