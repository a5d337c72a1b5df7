"""Derived networks: official checkpoints load strictly and reproduce their logits; FLOPs/params."""
from __future__ import annotations

import pytest
import torch

import fairdarts
from fairdarts.errors import UserError
from fairdarts.search_space import get_genotype, registered_names

COMPAT = ["FairDARTS_a", "FairDARTS_b", "FairDARTS_c", "DARTS_V2", "PC_DARTS_cifar"]

# paper_facts.md: FLOPs (thop, BN excluded) and params, 36 channels, 20 layers, one 32 px image.
# Params include the auxiliary head for FairDARTS_a,b,d,e,f,g, not for the others.
PUBLISHED = {
    "FairDARTS_a": (373e6, 2.83e6, True), "FairDARTS_b": (536e6, 3.88e6, True),
    "FairDARTS_c": (400e6, 2.59e6, False), "FairDARTS_d": (532e6, 3.84e6, True),
    "FairDARTS_e": (414e6, 3.12e6, True), "FairDARTS_f": (497e6, 3.62e6, True),
    "FairDARTS_g": (453e6, 3.38e6, True), "DARTS_V2": (528e6, 3.35e6, False),
    "PC_DARTS_cifar": (558e6, 3.63e6, False), "PDARTS": (532e6, 3.43e6, False),
}


@pytest.mark.parametrize("name", COMPAT)
def test_official_checkpoint_loads_strictly_and_reproduces_logits(name: str, compat_files) -> None:
    tar, io_path = compat_files(name)
    ckpt, io = torch.load(tar, weights_only=True), torch.load(io_path, weights_only=True)
    net = fairdarts.build_network(name, init_channels=16, layers=8, num_classes=10, auxiliary=True)
    ours = net.state_dict()
    assert list(ours.keys()) == list(ckpt["state_dict"].keys()) or set(ours) == set(ckpt["state_dict"])
    assert all(ours[k].shape == v.shape for k, v in ckpt["state_dict"].items())
    net.load_state_dict(ckpt["state_dict"], strict=True)
    net.eval()
    with torch.no_grad():
        logits, aux = net(io["input"])
    assert aux is None
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_flops_and_params_match_the_paper_within_one_percent(name: str) -> None:
    flops, params, with_aux = PUBLISHED[name]
    net = fairdarts.build_network(name, 36, 20, 10, auxiliary=True)
    cost = fairdarts.count_flops_params(net, (1, 3, 32, 32))
    assert abs(cost.flops - flops) / flops < 0.01
    counted = cost.params if with_aux else cost.params_no_aux
    assert abs(counted - params) / params < 0.01


@pytest.mark.parametrize("name", [n for n in registered_names() if get_genotype(n).form != "mobile"])
def test_every_registered_genotype_builds_and_trains(name: str) -> None:
    torch.manual_seed(0)
    net = fairdarts.build_network(name, init_channels=4, layers=5, num_classes=3, auxiliary=True, image_size=16)
    net.drop_path_prob = 0.2
    logits, aux = net(torch.randn(2, 3, 16, 16))
    assert logits.shape == aux.shape == (2, 3)
    (logits.sum() + aux.sum()).backward()


def test_imagenet_network_and_one_channel_cifar() -> None:
    for size in (224, 64):
        net = fairdarts.build_network("FairDARTS_a", 8, 5, 7, auxiliary=True, dataset="imagenet", image_size=size)
        logits, aux = net(torch.randn(2, 3, size, size))
        assert logits.shape == aux.shape == (2, 7)
    mono = fairdarts.build_network("DARTS_V2", 4, 5, 10, auxiliary=True, in_channels=1)
    assert mono(torch.randn(2, 1, 32, 32))[0].shape == (2, 10)


def test_drop_path_spares_identity_in_darts_cells_only_in_training() -> None:
    torch.manual_seed(0)
    net = fairdarts.build_network("DARTS_V2", 4, 3, 3)
    net.drop_path_prob = 0.5
    x = torch.randn(4, 3, 16, 16)
    net.eval()
    a, b = net(x)[0], net(x)[0]
    torch.testing.assert_close(a, b)  # no drop path in eval mode
    net.train()
    assert not torch.equal(net(x)[0], net(x)[0])


def test_reweight_genotype_scales_its_ops() -> None:
    g = get_genotype("DARTS_EXP1_RE2")
    plain = fairdarts.search_space.make_genotype(
        [[e.op, e.src] for e in g.normal], [[e.op, e.src] for e in g.reduce], g.normal_concat, g.reduce_concat)
    torch.manual_seed(0)
    a = fairdarts.build_network(g, 4, 3, 3).eval()
    b = fairdarts.build_network(plain, 4, 3, 3).eval()
    b.load_state_dict(a.state_dict())
    cell_a, cell_b = a.cells[0], b.cells[0]
    s = torch.randn(2, 12, 8, 8)
    assert not torch.allclose(cell_a(s, s, 0.0), cell_b(s, s, 0.0))
    assert cell_a._edge_weights[0] == pytest.approx(0.9)


def test_empty_fairdarts_cell_is_a_clear_error() -> None:
    g = fairdarts.search_space.make_genotype([], [["skip_connect", 2, 0]], form="fairdarts")
    with pytest.raises(UserError, match="no edges"):
        fairdarts.build_network(g, 4, 3)


def test_bad_sizes_are_clear_errors() -> None:
    with pytest.raises(UserError):
        fairdarts.build_network("FairDARTS_a", 0, 20)
    with pytest.raises(UserError, match="layers"):
        fairdarts.build_network("FairDARTS_a", 4, 2)
