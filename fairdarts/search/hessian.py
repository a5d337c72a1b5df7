"""The collapse instrument's numerics: extreme eigenvalues of the architecture Hessian.

RobustDARTS (Zela et al., ICLR 2020) track the dominant eigenvalue of the Hessian of the
validation cross entropy with respect to all architecture parameters (normal and reduction
cells together) and show that it grows as DARTS collapses. Their code builds the dense matrix
and reports ``max(eigvals(H))``: the largest *algebraic* eigenvalue. Plain power iteration would
find the largest-*magnitude* one, a different number whenever a negative eigenvalue is larger in
size, so this module runs Lanczos (with full reorthogonalisation) on exact Hessian-vector
products and reads both ends of the spectrum from it.

The operator (:func:`validation_hvp`) differentiates, on a fixed set of validation batches and
with the weights held fixed, ``cross_entropy (+ zero-one term, optional) + wd/2 ||alpha||^2``:
the weight-decay term is there because RobustDARTS differentiate the gradient Adam sees
(``+ wd * alpha``), so their matrix includes ``+ wd * I``. The model runs in training mode
(BatchNorm on batch statistics, as in RobustDARTS and as the architecture step sees it) on
scratch copies of the BatchNorm buffers, and every random generator is restored afterwards:
switching the instrument on leaves the search bit-identical (:func:`architecture_eigenvalues`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from fairdarts.reproducibility import capture_rng_state, restore_rng_state

Batch = tuple[Tensor, Tensor]
Objective = Callable[[Tensor, Tensor, Sequence[Tensor]], Tensor]   # (logits, target, alphas) -> loss
Reducer = Callable[[Tensor], None]                                 # in place, e.g. an all-reduce mean
MatVec = Callable[[Tensor], Tensor]

#: Seed of the Lanczos start vector: a private generator, identical on every rank and every run.
START_SEED = 0


@dataclass(frozen=True)
class EigenEstimate:
    """Both ends of the spectrum as Lanczos found them, and how far they converged.

    ``residual_*`` are ``||H y - theta y|| / max|theta|`` of the Ritz pairs (``y`` of unit
    norm): a bound on each eigenvalue's error relative to the spectral scale."""

    largest: float            # largest algebraic eigenvalue: RobustDARTS' number
    smallest: float           # smallest algebraic eigenvalue
    iterations: int           # Hessian-vector products (one per Lanczos step)
    residual_largest: float
    residual_smallest: float
    converged: bool           # residual_largest <= tol, or an invariant subspace was found

    @property
    def largest_magnitude(self) -> float:
        """The eigenvalue of largest size, with its sign (what power iteration would find)."""
        return self.smallest if abs(self.smallest) > abs(self.largest) else self.largest


def lanczos_extremes(matvec: MatVec, n: int, max_iters: int, tol: float, seed: int = START_SEED) -> EigenEstimate:
    """Extreme eigenvalues of the symmetric ``n x n`` operator ``matvec`` (float64 vectors).

    Lanczos with full reorthogonalisation (twice, classical Gram-Schmidt): the basis is at most
    a few hundred vectors of a few hundred entries, so exactness costs nothing next to one
    Hessian-vector product. Stops when the largest Ritz value's residual falls to
    ``tol * max|theta|``, when the Krylov space is invariant (exact eigenvalues), or after
    ``min(max_iters, n)`` products."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, generator=g, dtype=torch.float64)
    basis = [q / q.norm()]
    diag: list[float] = []
    off: list[float] = []
    for k in range(1, min(max_iters, n) + 1):
        w = matvec(basis[-1])
        diag.append(float(w @ basis[-1]))
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        beta = float(w.norm())
        theta, s = torch.linalg.eigh(_tridiagonal(diag, off))
        scale = max(float(theta.abs().max()), torch.finfo(torch.float64).tiny)
        res = beta * s[-1].abs() / scale   # ||H y_i - theta_i y_i|| = beta * |last entry of s_i|
        invariant = beta <= 1e-12 * scale
        done = invariant or float(res[-1]) <= tol
        if done or k == min(max_iters, n):
            return EigenEstimate(float(theta[-1]), float(theta[0]), k, float(res[-1]), float(res[0]), done)
        off.append(beta)
        basis.append(w / beta)
    raise ValueError(f"max_iters must be at least 1, got {max_iters}")


def _tridiagonal(diag: Sequence[float], off: Sequence[float]) -> Tensor:
    t = torch.diag(torch.tensor(diag, dtype=torch.float64))
    if off:
        o = torch.tensor(off, dtype=torch.float64)
        t = t + torch.diag(o, 1) + torch.diag(o, -1)
    return t


def validation_hvp(model: nn.Module, alphas: Sequence[Tensor], batches: Sequence[Batch], objective: Objective,
                   weight_decay: float, reduce: Reducer | None = None) -> MatVec:
    """``v -> H v`` for the mean of ``objective`` over ``batches``, plus ``weight_decay * v``.

    The gradient graph of every batch is built once (``create_graph=True``) and kept: each
    product is then one backward pass through it, and the operator stays the same matrix from
    product to product even where the forward draws random numbers (the noisy skips of the
    noise ablation). Weights enter detached (no weight gradients anywhere); BatchNorm runs on
    clones of its buffers, so the live running statistics see nothing. ``reduce`` averages the
    product over ranks (data parallel: each rank differentiates its own batches)."""
    fixed = {name: w.detach() for name, w in model.named_weight_parameters()}
    total = None
    for x, y in batches:
        scratch = {name: b.clone() for name, b in model.named_buffers()}
        loss = objective(functional_call(model, {**fixed, **scratch}, (x,)), y, alphas)
        grads = torch.autograd.grad(loss, list(alphas), create_graph=True, allow_unused=True,
                                    materialize_grads=True)
        flat = torch.cat([g.flatten() for g in grads])
        total = flat if total is None else total + flat
    if total is None:
        raise ValueError("the Hessian needs at least one batch")
    mean_grad = total / len(batches)

    def matvec(v: Tensor) -> Tensor:
        hv = torch.autograd.grad(mean_grad @ v.to(mean_grad), list(alphas), retain_graph=True, allow_unused=True,
                                 materialize_grads=True)
        out = torch.cat([h.flatten() for h in hv]).to(torch.float64)
        if reduce is not None:
            reduce(out)
        return out + weight_decay * v
    return matvec


@contextlib.contextmanager
def untouched_state(model: nn.Module) -> Iterator[None]:
    """Training mode for the block; afterwards the model's mode and every random generator
    (Python, NumPy, torch CPU and CUDA) are as before, whatever the block drew."""
    rng, was_training = capture_rng_state(), model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)
        restore_rng_state(rng)


def architecture_eigenvalues(model: nn.Module, batches: Sequence[Batch], objective: Objective,
                             weight_decay: float, max_iters: int, tol: float,
                             reduce: Reducer | None = None) -> EigenEstimate:
    """Extreme eigenvalues of the validation-loss Hessian w.r.t. ``model.arch_parameters()``,
    leaving weights, alphas, BatchNorm statistics, the model's mode and the random streams as
    they were (see the module doc)."""
    alphas = list(model.arch_parameters())
    n = sum(a.numel() for a in alphas)
    with untouched_state(model):
        matvec = validation_hvp(model, alphas, batches, objective, weight_decay, reduce)
        return lanczos_extremes(matvec, n, max_iters, tol)
