"""The DARTS cell's wiring, in one place: who feeds whom, and where the reductions sit.

A cell has two input states (0: ``c_{k-2}``, 1: ``c_{k-1}``) and ``steps`` intermediate nodes
(states ``2 .. steps + 1``). Node ``i`` (0-based) reads every earlier state, so it has
``i + 2`` incoming edges. The architecture weights of a cell are one matrix with a row per
edge, ordered node by node and, within a node, by input state::

    node 0: rows 0-1 (from 0, 1)   node 1: rows 2-4 (from 0, 1, 2)   ...   14 rows for 4 steps

The supernet, the derivation rules, the derived networks, the alpha plots and the ablations
all index that matrix; they take its layout from here rather than each re-deriving it.
"""
from __future__ import annotations

STEPS = 4  # intermediate nodes of the DARTS cell


def edges_of_node(node: int) -> int:
    """Incoming edges of intermediate node ``node`` (0-based): one from each earlier state."""
    return node + 2


def num_edges(steps: int = STEPS) -> int:
    """Edges (weight-matrix rows) of a cell with ``steps`` intermediate nodes: 14 for 4."""
    return sum(edges_of_node(i) for i in range(steps))


def node_rows(steps: int = STEPS) -> list[range]:
    """The weight-matrix rows of each intermediate node; ``rows[j]`` is the edge from state ``j``."""
    starts = [num_edges(i) for i in range(steps)]
    return [range(start, start + edges_of_node(i)) for i, start in enumerate(starts)]


def cell_edges(steps: int = STEPS) -> list[tuple[int, int]]:
    """``(source state, target state)`` of every edge, in row order."""
    return [(j, i + 2) for i in range(steps) for j in range(edges_of_node(i))]


def edge_input(edge: int, steps: int = STEPS) -> int:
    """The state that row ``edge`` reads (0 and 1 are the cell inputs)."""
    if not 0 <= edge < num_edges(steps):
        raise IndexError(edge)
    return cell_edges(steps)[edge][0]


def steps_for_edges(n_edges: int) -> int:
    """The fewest intermediate nodes whose cell has at least ``n_edges`` edges."""
    steps = 0
    while num_edges(steps) < n_edges:
        steps += 1
    return steps


def max_identity_edges(steps: int = STEPS) -> int:
    """Edges a derived DARTS-form cell keeps (two per node): the most skip ops one can hold."""
    return 2 * steps


#: The most cells a network may stack: 20 is the published CIFAR depth; Python builds a cell in
#: milliseconds, so 100,000 of them would take minutes before the first step.
MAX_LAYERS = 1000


def reduction_layers(layers: int) -> tuple[int, int]:
    """The cells that halve the resolution (and double the channels): at 1/3 and 2/3 of the depth."""
    return layers // 3, 2 * layers // 3


def is_reduction(layer: int, layers: int) -> bool:
    return layer in reduction_layers(layers)
