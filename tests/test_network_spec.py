"""NetworkSpec writes and reads the checkpoint's "network" record exactly; one builder serves all."""
from __future__ import annotations

import pytest
import torch

import fairdarts
from fairdarts.errors import UserError
from fairdarts.search_space import NetworkSpec, build_network, get_genotype

CELL_RECORD = {"init_channels": 8, "layers": 5, "num_classes": 10, "in_channels": 3, "image_size": 32,
               "auxiliary": True, "imagenet_net": False}
MOBILE_RECORD = {"mobile": True, "width_mult": 0.5, "dropout": 0.1, "num_classes": 7, "in_channels": 1,
                 "image_size": 64, "auxiliary": False, "imagenet_net": False, "init_channels": None, "layers": None}


def test_cell_record_round_trips_and_builds_what_the_public_api_builds() -> None:
    g = get_genotype("FairDARTS_a")
    spec = NetworkSpec.from_dict(g, CELL_RECORD)
    assert spec.to_dict() == CELL_RECORD and list(spec.to_dict()) == list(CELL_RECORD)
    assert spec == NetworkSpec.of(g, 10, 3, 32, 8, 5, True, False)
    torch.manual_seed(0)
    a = build_network(spec)
    torch.manual_seed(0)
    b = fairdarts.build_network(g, init_channels=8, layers=5, num_classes=10, auxiliary=True)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_mobile_record_round_trips_and_drops_the_cell_sizes() -> None:
    g = get_genotype("FairNAS_A")
    spec = NetworkSpec.of(g, 7, 1, 64, init_channels=36, layers=20, auxiliary=True, imagenet=True,
                          width_mult=0.5, dropout=0.1)
    assert spec.mobile and spec.to_dict() == MOBILE_RECORD
    assert NetworkSpec.from_dict(g, MOBILE_RECORD) == spec
    assert type(build_network(spec)).__name__ == "MobileNetwork"


def test_imagenet_flag_builds_the_imagenet_network() -> None:
    spec = NetworkSpec.from_dict(get_genotype("DARTS_V2"), {**CELL_RECORD, "imagenet_net": True, "image_size": 224})
    assert type(build_network(spec)).__name__ == "NetworkImageNet"


def test_genotype_and_record_of_different_kinds_are_refused() -> None:
    with pytest.raises(UserError, match="a mobile genotype needs a mobile network checkpoint"):
        NetworkSpec.from_dict(get_genotype("FairNAS_A"), CELL_RECORD)
    with pytest.raises(UserError, match="this checkpoint holds a mobile network"):
        NetworkSpec.from_dict(get_genotype("DARTS_V2"), MOBILE_RECORD)
