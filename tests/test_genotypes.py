"""Genotypes: the registry, JSON and official-text round trips, rejection of malformed input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import FIXTURES
from fairdarts.errors import UserError
from fairdarts.search_space import (
    genotype_from_dict, get_genotype, make_genotype, parse_genotype_text, registered_names,
)

PUBLISHED = ["FairDARTS_a", "FairDARTS_b", "FairDARTS_c", "FairDARTS_d", "FairDARTS_e", "FairDARTS_f",
             "FairDARTS_g", "DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PDARTS", "NASNet", "AmoebaNet",
             "DARTS_EXP1_RE1"]


def test_registry_holds_every_shared_genotype() -> None:
    shared = json.loads((FIXTURES / "genotypes.json").read_text())["genotypes"]
    assert set(shared) == {n for n in registered_names() if get_genotype(n).form != "mobile"}  # S2: test_mobile
    for name, entry in shared.items():
        g = get_genotype(name)
        assert g.form == entry["form"]
        assert g.to_dict()["normal"] == entry["normal"]
        assert g.to_dict()["reduce"] == entry["reduce"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_json_and_text_round_trips(name: str, tmp_path: Path) -> None:
    g = get_genotype(name)
    assert genotype_from_dict(json.loads(g.to_json())) == g
    assert parse_genotype_text(g.to_text()) == g
    (tmp_path / "g.json").write_text(g.to_json())
    (tmp_path / "g.txt").write_text(g.to_text())
    assert get_genotype(tmp_path / "g.json") == g
    assert get_genotype(str(tmp_path / "g.txt")) == g
    assert get_genotype(g.to_text()) == g


def test_official_text_with_range_concat() -> None:
    text = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 1), "
            "('skip_connect', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('skip_connect', 2)], "
            "normal_concat=range(2, 6), reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 0), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('avg_pool_3x3', 0)], reduce_concat=range(2, 6))")
    g = parse_genotype_text(text)
    assert g.normal_concat == (2, 3, 4, 5) and g.form == "darts"
    assert g.normal[7].to == 5 and g.normal[7].src == 2


def test_run_folder_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "genotype.json").write_text(get_genotype("FairDARTS_b").to_json())
    assert get_genotype(tmp_path) == get_genotype("FairDARTS_b")


def test_fairdarts_form_live_nodes_follow_first_appearance() -> None:
    g = get_genotype("FairDARTS_a")
    assert g.live_nodes(False) == [2, 4, 5]
    assert get_genotype("FairDARTS_c").live_nodes(False) == [2, 4, 5]


MALFORMED_TEXT = [
    ("Genotype(normal=[('sep_conv_9x9', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", "unknown op"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 7)], normal_concat=[2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", "out of range"),
    ("Genotype(normal=[('sep_conv_3x3', 0)", "cannot parse"),
    ("Genotype(normal=__import__('os').system('true'), reduce=[])", "plain list"),
    ("os.system('true')", "unknown arch"),
    ("Genotype.fromfile('x')", "must look like"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1)], normal_concat=[2])", "missing keys"),
]


@pytest.mark.parametrize("text,message", MALFORMED_TEXT)
def test_malformed_text_is_rejected_clearly(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        get_genotype(text)
    assert "\n" not in str(info.value)


MALFORMED_JSON = [
    ({"normal": [["sep_conv_3x3", 2, 0]]}, "missing keys: reduce"),
    ({"normal": [["sep_conv_3x3", 2, 0]], "reduce": [["bogus_op", 2, 0]]}, "unknown op"),
    ({"normal": [["sep_conv_3x3", 2, 3]], "reduce": [["skip_connect", 2, 0]]}, "out of range"),
    ({"normal": [["sep_conv_3x3", 0]], "reduce": [["skip_connect", 0], ["skip_connect", 1]],
      "normal_concat": [2], "reduce_concat": [2]}, "two edges per node"),
    ({"normal": [["sep_conv_3x3", "0"], ["skip_connect", 1]], "reduce": [["skip_connect", 0], ["skip_connect", 1]],
      "normal_concat": [2], "reduce_concat": [2]}, "must be an integer"),
    ({"normal": [], "reduce": [], "extra": 1}, "unknown keys"),
    ([1, 2], "must be an object"),
]


@pytest.mark.parametrize("data,message", MALFORMED_JSON)
def test_malformed_json_is_rejected_clearly(data: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        get_genotype(path)


def test_broken_json_file_and_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"normal": [')
    with pytest.raises(UserError, match="neither genotype JSON"):
        get_genotype(path)
    with pytest.raises(UserError, match="did you mean FairDARTS_a"):
        get_genotype("FairDARTS_aa")


def test_reweight_form_keeps_weights() -> None:
    g = get_genotype("DARTS_EXP1_RE2")
    assert g.form == "darts-reweight" and g.normal[0].weight == pytest.approx(0.9)
    assert make_genotype(g.to_dict()["normal"], g.to_dict()["reduce"], [2, 3, 4, 5], [2, 3, 4, 5]) == g
