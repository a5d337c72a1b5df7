"""Reweighted genotypes: the DARTS cell with each kept op scaled by its architecture weight.

The form is ``[op, from, weight]`` (``darts-reweight`` in :mod:`fairdarts.search_space.genotypes`);
:class:`fairdarts.search_space.networks.DartsCell` multiplies the op's output by ``weight``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fairdarts.search_space import Genotype, derive, genotypes_with_edges
from fairdarts.search_space.topology import STEPS, node_rows


def reweight_edges(weights: Any, primitives: Sequence[str], steps: int = STEPS) -> list[list[Any]]:
    """The DARTS derivation of one cell, each edge with the gate weight of its op."""
    W = np.asarray(weights, dtype=np.float64)
    edges = derive(W, primitives, "darts", steps=steps)
    rows = node_rows(steps)
    out = []
    for k, (op, src) in enumerate(edges):  # two edges per node, in node order
        row = rows[k // 2][int(src)]
        out.append([op, int(src), float(W[row, list(primitives).index(op)])])
    return out


def reweight_genotype(normal: Any, reduce: Any, primitives: Sequence[str], steps: int = STEPS) -> Genotype:
    """Both cells in the reweight form, ready to write as ``genotype.json``."""
    return genotypes_with_edges(reweight_edges(normal, primitives, steps), reweight_edges(reduce, primitives, steps),
                                "darts-reweight", steps)
