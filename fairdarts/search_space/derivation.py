"""Derive a discrete cell from gated architecture weights (the official parse rules).

``weights`` is the 14 x n_ops matrix of one cell *after* the gate (softmax rows for DARTS,
sigmoid entries for Fair DARTS); row ``k`` is the k-th edge in the order node 2 from 0, 1;
node 3 from 0, 1, 2; and so on. ``none`` is never chosen.

* ``darts``: per node keep the 2 inputs whose strongest op is largest, strongest op on each,
  strongest first; edges ``[op, from]``.
* ``threshold_sparse`` (Fair DARTS default): the same 2 edges, but an edge survives only if
  its op weight reaches ``op_threshold``; edges ``[op, to, from]``.
* ``threshold_edge``: every input; of its 2 strongest ops keep those reaching
  ``op_threshold``, weaker first; edges ``[op, to, from]``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fairdarts.errors import UserError

METHODS: tuple[str, ...] = ("darts", "threshold_sparse", "threshold_edge")


def _node_rows(steps: int) -> list[tuple[int, int]]:
    """(first row, number of inputs) of each intermediate node."""
    rows, start = [], 0
    for i in range(steps):
        rows.append((start, i + 2))
        start += i + 2
    return rows


def derive(weights: Any, primitives: Sequence[str], method: str = "darts",
           op_threshold: float | None = None, steps: int = 4) -> list[list[Any]]:
    """Edges of one cell derived from its gated weights (see the module docstring)."""
    W = np.asarray(weights, dtype=np.float64)
    n_edges = sum(i + 2 for i in range(steps))
    if W.shape != (n_edges, len(primitives)):
        raise UserError(f"architecture weights have shape {W.shape}; expected ({n_edges}, {len(primitives)}) "
                        f"for {steps} steps and {len(primitives)} ops")
    if method not in METHODS:
        raise UserError(f"unknown parse method {method!r}; use one of {', '.join(METHODS)}")
    if method != "darts":
        if op_threshold is None or not 0.0 <= op_threshold <= 1.0:
            raise UserError(f"--op_threshold must be in [0, 1] for {method}, got {op_threshold}")
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    W = W[:, candidates]
    names = [primitives[k] for k in candidates]

    edges: list[list[Any]] = []
    for i, (start, n_inputs) in enumerate(_node_rows(steps)):
        node = W[start:start + n_inputs]
        to = i + 2
        if method == "threshold_edge":
            for j in range(n_inputs):
                # Ascending order, last two: the weaker first (and, on equal weights, the later op).
                best_two = np.argsort(node[j], kind="stable")[-2:]
                edges += [[names[k], to, j] for k in best_two if node[j][k] >= op_threshold]
            continue
        strongest = sorted(range(n_inputs), key=lambda j: -node[j].max())[:2]
        for j in strongest:
            k = int(np.argmax(node[j]))
            if method == "darts":
                edges.append([names[k], j])
            elif node[j][k] >= op_threshold:
                edges.append([names[k], to, j])
    return edges


def derived_form(method: str) -> str:
    """The genotype form a derivation method produces."""
    return "darts" if method == "darts" else "fairdarts"
