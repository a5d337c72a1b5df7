"""The cell wiring of :mod:`fairdarts.search_space.topology` against what the networks build."""
from __future__ import annotations

import pytest

from fairdarts.search_space import FAIRDARTS_PRIMITIVES, Supernet, get_genotype
from fairdarts.search_space.networks import NetworkCIFAR
from fairdarts.search_space.topology import (
    cell_edges, edge_input, edges_of_node, is_reduction, max_identity_edges, node_rows, num_edges,
    reduction_layers, steps_for_edges,
)


def test_the_darts_cell_has_14_edges_in_node_order() -> None:
    assert num_edges() == 14 and num_edges(2) == 5 and num_edges(0) == 0
    assert [(r.start, r.stop) for r in node_rows()] == [(0, 2), (2, 5), (5, 9), (9, 14)]
    assert cell_edges()[:5] == [(0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    assert [edge_input(e) for e in range(14)] == [0, 1, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]
    assert [edges_of_node(i) for i in range(4)] == [2, 3, 4, 5]
    assert max_identity_edges() == 8


def test_rows_edges_and_inputs_agree_for_any_depth() -> None:
    for steps in range(1, 7):
        rows = node_rows(steps)
        assert rows[-1].stop == num_edges(steps) == len(cell_edges(steps))
        for node, r in enumerate(rows):
            assert [cell_edges(steps)[e] for e in r] == [(j, node + 2) for j in range(len(r))]
        assert steps_for_edges(num_edges(steps)) == steps
    with pytest.raises(IndexError):
        edge_input(14)


@pytest.mark.parametrize("layers", [3, 5, 8, 20])
def test_reduction_layers_are_where_both_networks_reduce(layers: int) -> None:
    cifar = NetworkCIFAR(4, 10, layers, False, get_genotype("DARTS_V2"))
    search = Supernet(4, 10, layers, FAIRDARTS_PRIMITIVES)
    for net in (cifar, search):
        assert [i for i, cell in enumerate(net.cells) if cell.reduction] == list(reduction_layers(layers))
    assert [i for i in range(layers) if is_reduction(i, layers)] == list(reduction_layers(layers))
    assert len(search.cells[0]._ops) == num_edges() and search.alphas_normal.shape[0] == num_edges()
