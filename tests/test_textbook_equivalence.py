"""Our supernet and search step compute exactly what the textbook DARTS step computes.

The benchmark (benchmarks/bench_vs_textbook.py) times both; this guards that a speed-up can
never come from computing something else. In float64 the only differences left are summation
orders, so the tolerance is tight.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_vs_textbook import ALGORITHMS, NetSize, compare_implementations  # noqa: E402
from fairdarts.search_space import DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES  # noqa: E402

TINY = NetSize(C=4, layers=3, image_size=8)


def _case(base: str, gate: str, primitives: tuple[str, ...], unrolled: bool):
    algo = dataclasses.replace(ALGORITHMS[base], gate=gate, primitives=primitives, unrolled=unrolled)
    return pytest.param(algo, id=f"{gate}-{'darts' if 'none' in primitives else 'fairdarts'}-"
                                 f"{'2nd' if unrolled else '1st'}")


pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [
    _case("fairdarts_1st", "sigmoid", FAIRDARTS_PRIMITIVES, False),
    _case("fairdarts_1st", "sigmoid", FAIRDARTS_PRIMITIVES, True),
    _case("darts_2nd", "softmax", DARTS_PRIMITIVES, False),
    _case("darts_2nd", "softmax", DARTS_PRIMITIVES, True),
    _case("fairdarts_1st", "sigmoid", DARTS_PRIMITIVES, True),
]


@pytest.mark.parametrize("algo", CASES)
def test_same_logits_and_gradients_as_textbook(algo):
    errors = compare_implementations(algo, TINY, batch_size=4, dtype=torch.float64)
    assert set(errors) == {"logits", "train_loss", "weight_grads", "alpha_grads"}
    for quantity, err in errors.items():
        assert err < 1e-10, f"{quantity} differs from the textbook step: relative error {err:.2e}"


def test_float32_agreement_is_rounding_only():
    """The benchmark's own precision: differences stay at float32 rounding level."""
    errors = compare_implementations(ALGORITHMS["darts_2nd"], TINY, batch_size=4, dtype=torch.float32)
    assert max(errors.values()) < 1e-3, errors


def test_textbook_pays_the_official_convolution_cost() -> None:
    """The textbook keeps the official plain nn.Conv2d: our faster depthwise gradients must not
    leak into the baseline that our speed-up is measured against."""
    from benchmarks.textbook import TextbookSupernet
    from fairdarts.search_space.depthwise import DepthwiseConv2d

    net = TextbookSupernet(4, 10, 3, DARTS_PRIMITIVES, gate="softmax")
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and not any(isinstance(m, DepthwiseConv2d) for m in convs)
    assert any(m.dilation == (2, 2) for m in convs)
