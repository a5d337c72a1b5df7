"""The darts/ ablations: noise on skip connections, random search, reweighted cells."""
from __future__ import annotations

import pytest
import torch

import fairdarts
from darts.noise import NoisySkip, add_skip_noise, noise_scale, set_noise_scale
from darts.random_search import random_search
from fairdarts.errors import UserError
from fairdarts.search_space import get_genotype
from fairdarts.search_space.operations import FactorizedReduce


@pytest.mark.parametrize("scheduler", ["cosine", "step"])
def test_noise_scale_decays_from_one_to_zero_then_stays_zero(scheduler: str) -> None:
    scales = [noise_scale(e, 30, scheduler) for e in range(40)]
    assert scales[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scales[:30], scales[1:30]))
    assert all(s == 0.0 for s in scales[30:])
    assert scales[15] == pytest.approx(0.5)  # both schedules cross 0.5 half-way


def test_cosine_and_step_differ() -> None:
    assert noise_scale(5, 30, "cosine") > noise_scale(5, 30, "step")


@pytest.mark.parametrize("noise_type", ["N", "U"])
def test_noisy_skip_is_random_in_training_and_identity_in_eval(noise_type: str) -> None:
    op = NoisySkip(noise_type)
    x = torch.randn(2, 3, 4, 4)
    op.train()
    a, b = op(x), op(x)
    assert not torch.equal(a, b) and not torch.equal(a, x)
    if noise_type == "U":
        noise = a - x
        torch.testing.assert_close(noise, noise.round(), atol=1e-5, rtol=0)  # integer-valued
        assert set(noise.round().unique().tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0}
    op.eval()
    assert torch.equal(op(x), x)
    op.train()
    op.scale = 0.0
    assert torch.equal(op(x), x)


@pytest.mark.parametrize("gate,primitives", [("softmax", "darts"), ("sigmoid", "fairdarts")])
def test_noise_goes_on_stride_one_skips_only(gate: str, primitives: str) -> None:
    net = fairdarts.build_supernet(gate, primitives, init_channels=4, layers=3)
    noisy = add_skip_noise(net, "N")
    strided = sum(isinstance(m, FactorizedReduce) for m in net.modules())
    # 3 layers: cells 1 and 2 are reductions; a reduction cell's 8 edges from its inputs have stride 2.
    assert len(noisy) == 14 + 2 * (14 - 8)
    assert strided >= 2 * 8
    set_noise_scale(noisy, 0.0)
    x = torch.randn(2, 3, 8, 8)
    net.train()
    torch.manual_seed(0)
    base = net(x)
    set_noise_scale(noisy, 1.0)
    torch.manual_seed(0)
    assert not torch.allclose(base, net(x))
    net.eval()
    set_noise_scale(noisy, 1.0)
    with torch.no_grad():
        a = net(x)
    set_noise_scale(noisy, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(a, net(x))


def test_random_search_honours_skip_count_and_flops() -> None:
    kept = random_search(num_identity=2, num_arch=2, flops_threshold=10, seed=1, init_channels=8, layers=8,
                         log=lambda *_: None)
    assert len(kept) == 2
    for c in kept:
        assert c.genotype.count_op("skip_connect") == 2
        assert c.flops >= 10e6
        assert all(e.op != "none" for e in c.genotype.normal + c.genotype.reduce)
    assert kept[0].genotype != kept[1].genotype


def test_random_search_gives_up_clearly() -> None:
    with pytest.raises(UserError, match="found only 0 of 1"):
        random_search(num_identity=2, num_arch=1, flops_threshold=1e9, seed=0, max_tries=20,
                      init_channels=4, layers=5, log=lambda *_: None)


def test_published_reweight_genotypes_build_and_run() -> None:
    for name in ("DARTS_EXP1_RE1", "DARTS_EXP2_RE5"):
        net = fairdarts.build_network(name, 4, 5, 10, auxiliary=True, image_size=16)
        logits, aux = net(torch.randn(2, 3, 16, 16))
        assert logits.shape == (2, 10)
        weights = [e.weight for e in get_genotype(name).normal]
        assert net.cells[0]._edge_weights == weights
