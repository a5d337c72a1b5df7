"""The architecture step: Adam on the alphas, first or second order.

Only the alphas' gradients are ever computed here (``torch.autograd.grad`` w.r.t. the arch
parameters): the official step calls ``loss.backward()`` and so computes, then discards, a
gradient for every weight (43% of its time).

Second order (DARTS eq. 7-8) never copies the supernet: the virtual step
``w' = w - xi * (momentum * buf + dL_train/dw + wd * w)`` and the finite-difference points
``w +- eps * v`` are plain tensors handed to :func:`torch.func.functional_call`, so the live
weights are never modified. Virtual forwards also run on scratch copies of the BatchNorm
buffers: the live running statistics only see real forwards.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fairdarts.search.losses import zero_one_loss

HESSIAN_MODES: tuple[str, ...] = ("finite_difference", "exact")
#: DARTS' finite-difference radius: eps = FD_SCALE / ||v||.
FD_SCALE = 0.01

GradReducer = Callable[[Sequence[Tensor]], None]


@dataclass
class ArchObjective:
    """The architecture loss: cross entropy, plus ``weight * L_01`` for sigmoid gates."""

    zero_one_weight: float = 0.0
    sep_loss: str = "l2"

    def __call__(self, logits: Tensor, target: Tensor, alphas: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(total, cross entropy, zero-one loss); the last is always computed, for logging."""
        ce = F.cross_entropy(logits, target)
        l01 = zero_one_loss(alphas, self.sep_loss)
        total = ce + self.zero_one_weight * l01 if self.zero_one_weight else ce
        return total, ce, l01


@dataclass
class ArchStepStats:
    loss: Tensor       # architecture objective on the architecture batch (detached)
    ce: Tensor
    zero_one: Tensor


def _grad(loss: Tensor, inputs: Sequence[Tensor], **kwargs) -> tuple[Tensor, ...]:
    """Gradients with zeros for unused inputs (a 'none'-only edge has no weights)."""
    return torch.autograd.grad(loss, list(inputs), allow_unused=True, materialize_grads=True, **kwargs)


class Architect:
    """Owns the alphas' Adam optimizer and computes their (hyper)gradients.

    ``reduce_grads`` (e.g. an all-reduce mean under torchrun) is applied to the alpha
    gradients before the Adam step, so the module works unchanged in data-parallel runs.
    """

    def __init__(self, model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float,
                 objective: ArchObjective, unrolled: bool = False, hessian: str = "finite_difference",
                 reduce_grads: GradReducer | None = None, guard: Callable[[Tensor], bool] | None = None,
                 capturable: bool = False):
        if hessian not in HESSIAN_MODES:
            raise ValueError(f"unknown hessian mode {hessian!r}; use one of {HESSIAN_MODES}")
        self.model = model
        self.alphas: list[nn.Parameter] = list(model.arch_parameters())
        # capturable: Adam's step count on the device, so a CUDA graph can replay the update
        self.optimizer = torch.optim.Adam(self.alphas, lr=lr, betas=betas, weight_decay=weight_decay,
                                          capturable=capturable)
        self.objective = objective
        self.unrolled = unrolled
        self.hessian = hessian
        self.reduce_grads = reduce_grads
        self.guard = guard  # False for a non-finite loss: skip the Adam step (fairdarts.guards)

    # ----- the step ---------------------------------------------------------------------
    def step(self, train_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor],
             w_optimizer: torch.optim.Optimizer | None = None) -> ArchStepStats:
        """One Adam step on the alphas (``w_optimizer`` supplies xi and momentum for second order)."""
        if self.unrolled:
            if w_optimizer is None:
                raise ValueError("the second-order step needs the weight optimizer")
            grads, stats = self.second_order_grads(train_batch, arch_batch, w_optimizer)
        else:
            grads, stats = self.first_order_grads(arch_batch)
        if self.guard is not None and not self.guard(stats.loss):
            return stats
        if self.reduce_grads is not None:
            self.reduce_grads(grads)
        for a, g in zip(self.alphas, grads):
            a.grad = g
        self.optimizer.step()
        for a in self.alphas:
            a.grad = None
        return stats

    # ----- first order -------------------------------------------------------------------
    def first_order_grads(self, arch_batch: tuple[Tensor, Tensor]) -> tuple[list[Tensor], ArchStepStats]:
        """d L_arch(w, alpha) / d alpha on the architecture batch, weights held fixed.

        The weights enter detached: autograd then skips their gradients everywhere, including
        inside custom autograd functions (``DepthwiseConv2d``), which cannot tell on their own
        that nobody asked for them. The live BatchNorm statistics are updated as before.
        """
        x, y = arch_batch
        fixed = {name: w.detach() for name, w in self.model.named_weight_parameters()}
        loss, ce, l01 = self.objective(functional_call(self.model, fixed, (x,)), y, self.alphas)
        grads = list(_grad(loss, self.alphas))
        return grads, ArchStepStats(loss.detach(), ce.detach(), l01.detach())

    # ----- second order ------------------------------------------------------------------
    def second_order_grads(self, train_batch: tuple[Tensor, Tensor], arch_batch: tuple[Tensor, Tensor],
                           w_optimizer: torch.optim.Optimizer) -> tuple[list[Tensor], ArchStepStats]:
        """DARTS hypergradient: dL_val(w', a)/da - xi * d2L_train(w, a)/(da dw) . dL_val/dw'."""
        names, weights = self._weights()
        x_t, y_t = train_batch
        exact = self.hessian == "exact"
        g_train = _grad(F.cross_entropy(self.model(x_t), y_t), weights, create_graph=exact)
        self._reduce_for_virtual_step(g_train, exact)

        xi, virtual = self._virtual_step(names, weights, g_train, w_optimizer)
        logits = functional_call(self.model, {**virtual, **self._scratch_buffers()}, (arch_batch[0],))
        loss, ce, l01 = self.objective(logits, arch_batch[1], self.alphas)
        grads = _grad(loss, self.alphas + list(virtual.values()))
        d_alpha, v = grads[:len(self.alphas)], grads[len(self.alphas):]
        self._reduce_for_virtual_step(v, exact)

        if exact:
            dot = sum((g * vi).sum() for g, vi in zip(g_train, v))
            implicit = _grad(dot, self.alphas)
        else:
            implicit = self._finite_difference(names, weights, v, train_batch)
        hyper = [da - xi * h for da, h in zip(d_alpha, implicit)]
        return hyper, ArchStepStats(loss.detach(), ce.detach(), l01.detach())

    def _reduce_for_virtual_step(self, grads: Sequence[Tensor], exact: bool) -> None:
        """Data parallel: average dL_train/dw and dL_val/dw' over ranks, so every rank takes the
        same virtual step and finite-difference points as one process on the global batch
        (the exact Hessian mode keeps per-rank terms: its graph cannot pass a collective)."""
        if self.reduce_grads is not None and not exact:
            self.reduce_grads(grads)

    def _weights(self) -> tuple[list[str], list[Tensor]]:
        named = list(self.model.named_weight_parameters())
        return [n for n, _ in named], [p for _, p in named]

    def _scratch_buffers(self) -> dict[str, Tensor]:
        return {n: b.clone() for n, b in self.model.named_buffers()}

    @torch.no_grad()
    def _virtual_step(self, names: list[str], weights: list[Tensor], g_train: Sequence[Tensor],
                      w_optimizer: torch.optim.Optimizer) -> tuple[float, dict[str, Tensor]]:
        """w' = w - xi * (momentum * buf + g + wd * w), with xi, momentum, wd from the SGD optimizer."""
        group_of = {id(p): g for g in w_optimizer.param_groups for p in g["params"]}
        xi = float(w_optimizer.param_groups[0]["lr"])
        virtual = {}
        for name, w, g in zip(names, weights, g_train):
            group = group_of[id(w)]
            step = g.detach() + group["weight_decay"] * w
            buf = w_optimizer.state.get(w, {}).get("momentum_buffer")
            if buf is not None:
                step = step + group["momentum"] * buf
            virtual[name] = (w - group["lr"] * step).requires_grad_()
        return xi, virtual

    def _finite_difference(self, names: list[str], weights: list[Tensor], v: Sequence[Tensor],
                           train_batch: tuple[Tensor, Tensor]) -> list[Tensor]:
        """(dL_train(w + eps v)/da - dL_train(w - eps v)/da) / (2 eps), eps = 0.01 / ||v||."""
        x, y = train_batch
        eps = FD_SCALE / torch.cat([t.flatten() for t in v]).norm()

        def alpha_grad(sign: float) -> tuple[Tensor, ...]:
            with torch.no_grad():
                shifted = {n: w + sign * eps * vi for n, w, vi in zip(names, weights, v)}
            logits = functional_call(self.model, {**shifted, **self._scratch_buffers()}, (x,))
            return _grad(F.cross_entropy(logits, y), self.alphas)

        plus, minus = alpha_grad(1.0), alpha_grad(-1.0)
        return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]
