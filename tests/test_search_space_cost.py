"""The analytic FLOPs and parameter counts equal thop's on the built network, integer for integer."""
from __future__ import annotations

from typing import Any

import pytest

import fairdarts
from fairdarts.errors import UserError
from fairdarts.search_space import MobileGenotype, get_genotype, make_genotype, registered_names
from fairdarts.search_space.cost import network_cost

CELL_NAMES = [n for n in registered_names() if not isinstance(get_genotype(n), MobileGenotype)]
SIZES: dict[str, dict[str, Any]] = {
    "published": dict(init_channels=36, layers=20),
    # odd resolution (15 -> 8 -> 4: FactorizedReduce's shifted branch is smaller), grey input, aux head
    "small_odd": dict(init_channels=8, layers=5, num_classes=7, auxiliary=True, in_channels=1, image_size=15),
    "imagenet": dict(init_channels=16, layers=8, num_classes=1000, auxiliary=True, dataset="imagenet",
                     image_size=64),
}


def assert_matches_thop(genotype: Any, size: dict[str, Any]) -> None:
    image = size.get("image_size") or 32
    net = fairdarts.build_network(genotype, **size)
    expected = fairdarts.count_flops_params(net, (1, size.get("in_channels", 3), image, image))
    assert network_cost(genotype, **size) == expected


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", ["DARTS_V2", "FairDARTS_c"])  # FairDARTS_c has an edge from a missing node
def test_matches_thop_on_a_darts_and_a_fairdarts_genotype(name: str, size: str) -> None:
    assert_matches_thop(name, SIZES[size])


def test_matches_thop_with_none_and_factorised_ops_in_the_reduction_cell() -> None:
    ops = ["none", "conv_7x1_1x7", "sep_conv_7x7", "skip_connect", "avg_pool_3x3", "none", "max_pool_3x3",
           "dil_conv_5x5"]
    srcs = [0, 1, 0, 2, 1, 3, 4, 0]
    edges = [[op, src] for op, src in zip(ops, srcs)]
    genotype = make_genotype(edges, edges, [2, 3, 4, 5], [2, 3, 4, 5])
    assert_matches_thop(genotype, SIZES["small_odd"])


@pytest.mark.slow
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", CELL_NAMES)
def test_matches_thop_on_every_registered_cell_genotype(name: str, size: str) -> None:
    assert_matches_thop(name, SIZES[size])


def test_refuses_what_it_cannot_count() -> None:
    with pytest.raises(UserError, match="mobile"):
        network_cost("FairNAS_A")
    with pytest.raises(UserError, match="at least 3"):
        network_cost("DARTS_V2", layers=2)
