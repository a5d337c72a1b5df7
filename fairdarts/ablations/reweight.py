"""Reweighted genotypes: the DARTS cell with each kept op scaled by its architecture weight.

The form is ``[op, from, weight]`` (``darts-reweight`` in :mod:`fairdarts.search_space.genotypes`);
:class:`fairdarts.search_space.networks.DartsCell` multiplies the op's output by ``weight``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fairdarts.search_space import Genotype, derive, genotypes_with_edges


def _node_start(node: int) -> int:
    """First row of intermediate node ``node`` (0-based) in the 14 x n_ops weight matrix."""
    return sum(i + 2 for i in range(node))


def reweight_edges(weights: Any, primitives: Sequence[str], steps: int = 4) -> list[list[Any]]:
    """The DARTS derivation of one cell, each edge with the gate weight of its op."""
    W = np.asarray(weights, dtype=np.float64)
    edges = derive(W, primitives, "darts", steps=steps)
    out = []
    for k, (op, src) in enumerate(edges):  # two edges per node, in node order
        row = _node_start(k // 2) + int(src)
        out.append([op, int(src), float(W[row, list(primitives).index(op)])])
    return out


def reweight_genotype(normal: Any, reduce: Any, primitives: Sequence[str], steps: int = 4) -> Genotype:
    """Both cells in the reweight form, ready to write as ``genotype.json``."""
    return genotypes_with_edges(reweight_edges(normal, primitives, steps), reweight_edges(reduce, primitives, steps),
                                "darts-reweight", steps)
