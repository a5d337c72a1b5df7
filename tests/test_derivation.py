"""Derivation from alphas reproduces the official parse on all golden vectors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fairdarts import derive
from fairdarts.errors import UserError
from fairdarts.search_space import DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES, genotypes_with_edges

from conftest import FIXTURES

GOLDEN = json.loads((FIXTURES / "parse_golden.json").read_text())


@pytest.mark.parametrize("case", GOLDEN, ids=[f"{c['name']}-{c['method']}-{c['op_threshold']}" for c in GOLDEN])
def test_golden_vector(case: dict) -> None:
    edges = derive(case["weights"], case["primitives"], case["method"], case["op_threshold"])
    assert edges == case["genotype"]


def test_none_is_never_derived() -> None:
    w = np.full((14, 8), 0.01)
    w[:, 0] = 0.9  # 'none' strongest everywhere
    w[:, 4] = np.linspace(0.1, 0.5, 14)
    edges = derive(w, DARTS_PRIMITIVES, "darts")
    assert all(op != "none" for op, _ in edges) and len(edges) == 8


def test_derived_edges_build_a_genotype() -> None:
    rng = np.random.default_rng(0)
    normal, reduce = rng.random((14, 7)), rng.random((14, 7))
    for method, thr in (("darts", None), ("threshold_sparse", 0.3), ("threshold_edge", 0.5)):
        g = genotypes_with_edges(derive(normal, FAIRDARTS_PRIMITIVES, method, thr),
                                 derive(reduce, FAIRDARTS_PRIMITIVES, method, thr),
                                 "darts" if method == "darts" else "fairdarts")
        assert len(g.normal) > 0


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "threshold_sparse", "op_threshold": 1.5}, "op_threshold"),
    ({"method": "threshold_edge", "op_threshold": None}, "op_threshold"),
    ({"method": "greedy"}, "unknown parse method"),
])
def test_bad_derivation_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        derive(np.zeros((14, 7)), FAIRDARTS_PRIMITIVES, **kwargs)


def test_wrong_weight_shape() -> None:
    with pytest.raises(UserError, match="shape"):
        derive(np.zeros((10, 7)), FAIRDARTS_PRIMITIVES)
