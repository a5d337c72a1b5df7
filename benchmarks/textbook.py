"""A plain textbook DARTS supernet and search step, written for the benchmark only.

This is the formulation of the official DARTS / Fair DARTS code, kept deliberately naive so
that ``bench_vs_textbook.py`` measures what our implementation gains over it:

* every candidate op of every edge is its own module with its own leading ReLU;
* the mixed op is a Python ``sum(w * op(x))`` (``none`` included: ``w * 0``);
* the architecture step calls ``loss.backward()``, computing every weight gradient too;
* the second-order step deep-copies the whole supernet for the virtual step ``w'`` and nudges
  the live weights in place for the finite difference.

The module names equal our supernet's, so ``load_state_dict(our_supernet.state_dict())`` maps
every key one-to-one (:func:`textbook_state`), and both networks compute the same function.
Never used by the search itself.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fairdarts.search_space.depthwise import DepthwiseConv2d
from fairdarts.search_space.operations import FactorizedReduce, NativeChains, ReLUConvBN, build_op
from fairdarts.search_space.supernet import apply_gate
from fairdarts.search_space.topology import num_edges


def official_convs(module: nn.Module) -> nn.Module:
    """Swap our :class:`DepthwiseConv2d` for the plain ``nn.Conv2d`` of the official ops (same
    configuration; oneDNN's own gradients) and keep the ops off the native CPU kernels, so the
    textbook pays what the official code pays."""
    if isinstance(module, (NativeChains, FactorizedReduce)):
        module.native = False
    for name, child in module.named_children():
        if isinstance(child, DepthwiseConv2d):
            setattr(module, name, nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                            child.stride, child.padding, child.dilation, child.groups, bias=False))
        else:
            official_convs(child)
    return module


class TextbookMixedOp(nn.Module):
    def __init__(self, C: int, stride: int, primitives: Sequence[str]):
        super().__init__()
        ops = []
        for name in primitives:
            op = official_convs(build_op(name, C, stride, affine=False, leading_relu=True))
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            ops.append(op)
        self._ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class TextbookCell(nn.Module):
    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, primitives: Sequence[str]):
        super().__init__()
        self.reduction = reduction
        self._steps, self._multiplier = steps, multiplier
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._ops = nn.ModuleList(
            TextbookMixedOp(C, 2 if reduction and j < 2 else 1, primitives)
            for i in range(steps) for j in range(2 + i)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class TextbookSupernet(nn.Module):
    """Same constructor arguments, parameter names and mathematics as our ``Supernet``."""

    def __init__(self, C: int, num_classes: int, layers: int, primitives: Sequence[str],
                 gate: str = "sigmoid", steps: int = 4, multiplier: int = 4,
                 stem_multiplier: int = 3, in_channels: int = 3):
        super().__init__()
        self.gate = gate
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(TextbookCell(steps, multiplier, C_prev_prev, C_prev, C_curr,
                                           reduction, reduction_prev, primitives))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        shape = (num_edges(steps), len(primitives))
        self.alphas_normal = nn.Parameter(torch.zeros(shape))
        self.alphas_reduce = nn.Parameter(torch.zeros(shape))
        official_convs(self)  # the cells' preprocessing too

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("alphas_")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal = apply_gate(self.alphas_normal, self.gate)
        w_reduce = apply_gate(self.alphas_reduce, self.gate)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(self.global_pooling(s1).flatten(1))


def textbook_state(our_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map our supernet's ``state_dict`` onto the textbook one (the module names coincide)."""
    return {k: v.clone() for k, v in our_state.items()}


def zero_one_loss(model: TextbookSupernet) -> torch.Tensor:
    """Fair DARTS' L_01 = -mean((sigmoid(alpha) - 0.5)^2) over every entry of both matrices."""
    gates = torch.sigmoid(torch.cat([a.flatten() for a in model.arch_parameters()]))
    return -((gates - 0.5) ** 2).mean()


def arch_loss(model: TextbookSupernet, x: torch.Tensor, y: torch.Tensor, zero_one_weight: float) -> torch.Tensor:
    loss = F.cross_entropy(model(x), y)
    if zero_one_weight:
        loss = loss + zero_one_weight * zero_one_loss(model)
    return loss


class TextbookSearch:
    """The official search step: ``Architect.step`` then the weight step, nothing saved."""

    def __init__(self, model: TextbookSupernet, lr: float, momentum: float, weight_decay: float,
                 arch_lr: float, arch_betas: tuple[float, float], arch_weight_decay: float,
                 zero_one_weight: float, grad_clip: float = 5.0):
        self.model = model
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.zero_one_weight, self.grad_clip = zero_one_weight, grad_clip
        self.w_optimizer = torch.optim.SGD(model.weight_parameters(), lr, momentum=momentum,
                                           weight_decay=weight_decay)
        self.a_optimizer = torch.optim.Adam(model.arch_parameters(), lr=arch_lr, betas=arch_betas,
                                            weight_decay=arch_weight_decay)

    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
             y_val: torch.Tensor, unrolled: bool) -> None:
        self.arch_backward(x_train, y_train, x_val, y_val, unrolled)
        self.a_optimizer.step()
        self.weight_backward(x_train, y_train)
        self.w_optimizer.step()

    def arch_backward(self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                      y_val: torch.Tensor, unrolled: bool) -> None:
        """Leave the architecture gradient in ``alpha.grad``."""
        self.a_optimizer.zero_grad()
        if not unrolled:
            arch_loss(self.model, x_val, y_val, self.zero_one_weight).backward()
            return
        unrolled_model = self._unrolled_model(x_train, y_train)
        arch_loss(unrolled_model, x_val, y_val, self.zero_one_weight).backward()
        dalpha = [a.grad for a in unrolled_model.arch_parameters()]
        vector = [p.grad if p.grad is not None else torch.zeros_like(p)
                  for p in unrolled_model.weight_parameters()]
        implicit = self._hessian_vector_product(vector, x_train, y_train)
        for a, g, ig in zip(self.model.arch_parameters(), dalpha, implicit):
            a.grad = g - self.lr * ig

    def weight_backward(self, x_train: torch.Tensor, y_train: torch.Tensor) -> None:
        """Leave the weight gradient (clipped) in ``w.grad``."""
        self.w_optimizer.zero_grad()
        F.cross_entropy(self.model(x_train), y_train).backward()
        nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.grad_clip)

    def _unrolled_model(self, x: torch.Tensor, y: torch.Tensor) -> TextbookSupernet:
        """A deep copy of the model holding w' = w - lr * (momentum * buf + dL/dw + wd * w)."""
        weights = self.model.weight_parameters()
        grads = torch.autograd.grad(F.cross_entropy(self.model(x), y), weights)
        unrolled = copy.deepcopy(self.model)
        with torch.no_grad():
            for w, g, w_new in zip(weights, grads, unrolled.weight_parameters()):
                buf = self.w_optimizer.state.get(w, {}).get("momentum_buffer")
                moment = self.momentum * buf if buf is not None else torch.zeros_like(w)
                w_new.copy_(w - self.lr * (moment + g + self.weight_decay * w))
        unrolled.zero_grad()
        return unrolled

    def _hessian_vector_product(self, vector: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                                r: float = 1e-2) -> list[torch.Tensor]:
        """(dL_train(w+)/da - dL_train(w-)/da) / (2 eps), w+- = w +- eps * v, eps = r / ||v||."""
        eps = r / torch.cat([v.flatten() for v in vector]).norm()
        weights = self.model.weight_parameters()
        alphas = self.model.arch_parameters()
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(eps * v)
        grads_p = torch.autograd.grad(F.cross_entropy(self.model(x), y), alphas)
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.sub_(2 * eps * v)
        grads_n = torch.autograd.grad(F.cross_entropy(self.model(x), y), alphas)
        with torch.no_grad():
            for w, v in zip(weights, vector):
                w.add_(eps * v)
        return [(p - n) / (2 * eps) for p, n in zip(grads_p, grads_n)]
