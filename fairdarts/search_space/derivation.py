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

import math
from typing import Any, Mapping, Sequence

import numpy as np

from fairdarts.errors import UserError
from fairdarts.search_space.topology import node_rows, num_edges

METHODS: tuple[str, ...] = ("darts", "threshold_sparse", "threshold_edge")


def derive(weights: Any, primitives: Sequence[str], method: str = "darts",
           op_threshold: float | None = None, steps: int = 4) -> list[list[Any]]:
    """Edges of one cell derived from its gated weights (see the module docstring)."""
    W = np.asarray(weights, dtype=np.float64)
    n_edges = num_edges(steps)
    if W.shape != (n_edges, len(primitives)):
        raise UserError(f"architecture weights have shape {W.shape}; expected ({n_edges}, {len(primitives)}) "
                        f"for {steps} steps and {len(primitives)} ops")
    if not np.isfinite(W).all():
        bad = int((~np.isfinite(W)).sum())
        raise UserError(f"the architecture weights hold {bad} NaN or infinite values of {W.size}: the search that "
                        "wrote them diverged, no genotype can be derived from them")
    if method not in METHODS:
        raise UserError(f"unknown parse method {method!r}; use one of {', '.join(METHODS)}")
    if method != "darts":
        if op_threshold is None or not 0.0 <= op_threshold <= 1.0:
            raise UserError(f"--op_threshold must be in [0, 1] for {method}, got {op_threshold}")
    candidates = [k for k, name in enumerate(primitives) if name != "none"]
    W = W[:, candidates]
    names = [primitives[k] for k in candidates]

    edges: list[list[Any]] = []
    for i, rows in enumerate(node_rows(steps)):
        node, n_inputs = W[rows.start:rows.stop], len(rows)
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


def empty_cell_advice(cells: Mapping[str, tuple[Any, list]], primitives: Sequence[str], method: str,
                      op_threshold: float | None) -> str | None:
    """``None`` when every cell has an edge; else one sentence naming the empty cells, the
    gate range found in them and the two remedies: the ``darts`` rule (never empty), or a
    threshold at most the highest gate, which keeps at least that edge.

    ``cells`` maps a cell name to (its gated weights, its derived edges). The search, the
    derive command and ``train.py`` all say this same sentence.
    """
    empty = {name: np.asarray(w, dtype=np.float64) for name, (w, edges) in cells.items() if not edges}
    if not empty:
        return None
    usable = [k for k, name in enumerate(primitives) if name != "none"]  # none is never derived
    ranges = {name: (w[:, usable].min(), w[:, usable].max()) for name, w in empty.items()}
    pick = math.floor(min(hi for _, hi in ranges.values()) * 100) / 100
    found = ", ".join(f"{name} {lo:.3f}-{hi:.3f}" for name, (lo, hi) in ranges.items())
    which = " and ".join(empty) + (" cells are" if len(empty) > 1 else " cell is")
    return (f"the {which} empty: no gate reached --op_threshold {op_threshold:g} (gates found: {found}); "
            f"derive with --parse_method darts (the 2 strongest inputs of every node), or with "
            f"--parse_method {method} --op_threshold {pick:.2f} (at most the highest gate)")
