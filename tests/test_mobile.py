"""Search space S2: ops, residuals, gates, the supernet against derived networks, derivation,
mobile genotypes, and FLOPs / params against FairNAS' published networks."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import fairdarts
from conftest import FIXTURES
from fairdarts.errors import UserError
from fairdarts.flops import count_flops_params
from fairdarts.search.losses import zero_one_loss
from fairdarts.search_space import (
    MOBILE_OPS, MobileGenotype, MobileNetwork, MobileSupernet, derive_mobile, get_genotype, make_mobile_genotype,
    mobile_primitives,
)
from fairdarts.search_space.mobile import MobileMixedLayer, build_mb
from fairdarts.search_space.mobile_genotype import (
    MB_OPS, N_LAYERS, LayerSpec, from_choice_string, layer_specs, parse_mb,
)

REFERENCE = json.loads((FIXTURES / "fairnas_reference.json").read_text())
NETWORKS = ("FairNAS_A", "FairNAS_B", "FairNAS_C")
RESIDUAL = [i not in (0, 2, 6, 10, 14, 18) for i in range(N_LAYERS)]  # all but each stage's first layer

pytestmark = pytest.mark.usefixtures("one_thread")


# ----- layout and ops -------------------------------------------------------------------------
def test_layout_matches_the_fairnas_reference() -> None:
    for spec, ref in zip(layer_specs(), REFERENCE["networks"]["FairNAS_A"]["layers"]):
        assert (spec.c_in, spec.c_out, spec.stride, spec.residual) == (ref["in"], ref["out"], ref["stride"],
                                                                       ref["residual"])
    assert [s.residual for s in layer_specs()] == RESIDUAL and sum(RESIDUAL) == 13
    assert [s.residual for s in layer_specs(0.25)] == RESIDUAL  # rounded widths do not add residuals


@pytest.mark.parametrize("name", MB_OPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_shape_at_stride_1_and_2(name: str, stride: int) -> None:
    op = build_mb(name, LayerSpec(8, 12, stride, residual=False))
    kernel, expansion = parse_mb(name)
    assert op.op[3].kernel_size == (kernel, kernel) and op.op[0].out_channels == 8 * expansion
    assert op(torch.randn(2, 8, 9, 9)).shape == (2, 12, 5 if stride == 2 else 9, 5 if stride == 2 else 9)


def test_residual_only_where_allowed() -> None:
    x = torch.randn(2, 8, 6, 6)
    zero = torch.zeros(len(MB_OPS))
    residual = MobileMixedLayer(LayerSpec(8, 8, 1, residual=True), MB_OPS)
    plain = MobileMixedLayer(LayerSpec(8, 8, 1, residual=False), MB_OPS)
    assert torch.equal(residual(x, zero), x)  # all gates 0: the residual layer passes x through
    assert torch.count_nonzero(plain(x, zero)) == 0
    net = MobileNetwork(get_genotype("FairNAS_A"), num_classes=10, width_mult=0.25)
    assert [layer.residual for layer in net.layers] == RESIDUAL


# ----- gates ----------------------------------------------------------------------------------
def test_sigmoid_gates_are_independent_and_softmax_rows_sum_to_one() -> None:
    net = MobileSupernet(10, gate="sigmoid", width_mult=0.25)
    with torch.no_grad():
        net.alphas_mobile.normal_()
        before = net.gated_weights()[0].clone()
        net.alphas_mobile[3, 2] += 1.0
    after = net.gated_weights()[0]
    changed = (after != before).nonzero().tolist()
    assert changed == [[3, 2]] and torch.allclose(after, torch.sigmoid(net.alphas_mobile))
    soft = MobileSupernet(10, gate="softmax", width_mult=0.25, skip=True)
    w = soft.gated_weights()[0]
    assert w.shape == (N_LAYERS, 7) and torch.allclose(w.sum(1), torch.ones(N_LAYERS))
    skip = list(mobile_primitives(True)).index("skip")
    assert (w[[i for i in range(N_LAYERS) if not RESIDUAL[i]], skip] == 0).all()
    gated = MobileSupernet(10, gate="sigmoid", width_mult=0.25, skip=True).gated_weights()[0]
    assert (gated[:, skip] == torch.tensor(RESIDUAL, dtype=torch.float) * 0.5).all()


@pytest.mark.parametrize("gate,skip", [("sigmoid", False), ("softmax", True)])
def test_forward_backward_reaches_every_alpha(gate: str, skip: bool) -> None:
    torch.manual_seed(0)
    net = MobileSupernet(5, gate=gate, width_mult=0.25, skip=skip, alpha_init="randn")
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    (grad,) = torch.autograd.grad(loss, net.arch_parameters())
    reachable = net.allowed  # skip's alpha on a non-residual layer is masked out of the gates
    assert (grad[reachable] != 0).all() and (grad[~reachable] == 0).all()
    assert {n for n, _ in net.named_weight_parameters()}.isdisjoint({"alphas_mobile"})
    assert len(list(net.weight_parameters())) + 1 == len(list(net.parameters()))


def test_sigmoid_skip_alpha_feels_only_the_zero_one_loss() -> None:
    net = MobileSupernet(5, gate="sigmoid", width_mult=0.25, skip=True)
    with torch.no_grad():
        net.alphas_mobile.fill_(0.3)
    ce = torch.nn.functional.cross_entropy(net(torch.randn(2, 3, 16, 16)), torch.tensor([0, 1]))
    (g_ce,) = torch.autograd.grad(ce, net.arch_parameters())
    (g_01,) = torch.autograd.grad(zero_one_loss(net.arch_parameters()), net.arch_parameters())
    assert (g_ce[:, -1] == 0).all() and (g_01[:, -1] != 0).all()


# ----- the supernet with fixed gates is the derived network ------------------------------------
def _random_layers(rng: random.Random, skip: bool, max_ops: int) -> list[list[str]]:
    layers = []
    for residual in RESIDUAL:
        choices = list(MB_OPS) + (["skip"] if skip and residual else [])
        layers.append(rng.sample(choices, rng.randint(1, max_ops)))
    return layers


def _fix_gates(supernet: MobileSupernet, layers: list[list[str]]) -> None:
    """Alphas of +-40: sigmoid gates of 1 and 4e-18 (exactly 1 and ~0 in float64)."""
    with torch.no_grad():
        for i, ops in enumerate(layers):
            for k, name in enumerate(supernet.primitives):
                supernet.alphas_mobile[i, k] = 40.0 if name in ops else -40.0


def _copy_weights(supernet: MobileSupernet, net: MobileNetwork, layers: list[list[str]]) -> None:
    state = {k: v for k, v in supernet.state_dict().items() if not k.startswith(("layers.", "alphas_"))}
    for i, ops in enumerate(layers):
        columns = [name for name in supernet.primitives if name != "skip"]
        kept = [name for name in ops if name != "skip"]
        for j, name in enumerate(kept):
            src = supernet.layers[i]._ops[columns.index(name)].state_dict()
            state.update({f"layers.{i}._ops.{j}.{k}": v for k, v in src.items()})
    net.load_state_dict(state, strict=True)


@pytest.mark.parametrize("seed,skip,max_ops", [(0, False, 1), (1, True, 1), (2, True, 3)])
def test_supernet_with_fixed_gates_equals_the_derived_network_in_float64(seed: int, skip: bool, max_ops: int) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    layers = _random_layers(rng, skip, max_ops)
    genotype = make_mobile_genotype(layers)
    supernet = MobileSupernet(7, width_mult=0.25, skip=skip).double()
    net = MobileNetwork(genotype, num_classes=7, width_mult=0.25, dropout=0.0).double()
    _fix_gates(supernet, layers)
    _copy_weights(supernet, net, layers)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    for mode in ("train", "eval"):
        supernet.train(mode == "train")
        net.train(mode == "train")
        expected = supernet(x)
        got, aux = net(x)
        assert aux is None
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-8)  # float32 would differ by ~1e-6


def test_skip_alone_makes_a_layer_the_identity() -> None:
    layers = [["mb_k3_e3"]] * N_LAYERS
    layers[1] = ["skip"]
    net = MobileNetwork(make_mobile_genotype(layers), num_classes=3, width_mult=0.25)
    x = torch.randn(2, net.specs[1].c_in, 8, 8)
    assert net.layers[1](x, 0.0) is x and len(net.layers[1]._ops) == 0


# ----- derivation -----------------------------------------------------------------------------
def test_argmax_and_threshold_derivation() -> None:
    prims = mobile_primitives(True)
    w = np.full((N_LAYERS, len(prims)), 0.1)
    w[:, prims.index("mb_k5_e3")] = 0.6
    w[0, prims.index("mb_k3_e6")] = 0.9          # layer 1: two ops over 0.5, the strongest first
    w[1, prims.index("skip")] = 0.95             # layer 2 (residual): skip is the strongest
    w[1, prims.index("mb_k7_e6")] = 0.7          #   but kept beside a real op it adds nothing
    w[2, prims.index("skip")] = 0.99             # layer 3 has no residual: skip never chosen
    w[3, :] = 0.2                                # layer 4: nothing reaches the threshold
    w[3, prims.index("skip")] = 0.3
    argmax = derive_mobile(w, prims, "argmax")
    assert argmax.layers[0] == ("mb_k3_e6",) and argmax.layers[1] == ("skip",)
    assert argmax.layers[2] == ("mb_k5_e3",) and argmax.layers[3] == ("skip",)
    thr = derive_mobile(w, prims, "threshold", 0.5)
    assert thr.layers[0] == ("mb_k3_e6", "mb_k5_e3")
    assert thr.layers[1] == ("mb_k7_e6", "mb_k5_e3") and thr.layers[2] == ("mb_k5_e3",)
    assert thr.layers[3] == ("skip",)  # at least the strongest, even below the threshold
    assert all(ops == ("mb_k5_e3",) for ops in thr.layers[4:])
    assert derive_mobile(w, prims, "threshold", 0.0).layers[5] == tuple(  # every op, strongest first
        ["mb_k5_e3"] + [p for p in prims if p not in ("mb_k5_e3", "skip")])


@pytest.mark.parametrize("args,message", [
    ((np.zeros((18, 6)), MB_OPS, "argmax"), "shape"),
    ((np.zeros((19, 6)), MB_OPS, "darts"), "unknown mobile parse method"),
    ((np.zeros((19, 6)), MB_OPS, "threshold", None), "op_threshold"),
])
def test_derivation_errors_are_one_line(args, message: str) -> None:
    with pytest.raises(UserError, match=message):
        derive_mobile(*args)


# ----- genotypes ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NETWORKS)
def test_registered_networks_are_the_published_choices(name: str, tmp_path: Path) -> None:
    g = get_genotype(name)
    assert isinstance(g, MobileGenotype) and g.form == "mobile"
    assert g == from_choice_string(REFERENCE["networks"][name]["choice_string"])
    assert get_genotype(g.to_json()) == g
    (tmp_path / "g.json").write_text(g.to_json())
    assert get_genotype(tmp_path / "g.json") == g
    assert fairdarts.get_genotype(str(tmp_path / "g.json")).to_dict() == json.loads(g.to_json())
    assert g.to_text().startswith("mobile: mb_k")


@pytest.mark.parametrize("layers,message", [
    ([["mb_k3_e3"]] * 18, "19 op lists"),
    ("mb_k3_e3", "19 op lists"),
    ([["mb_k3_e7"]] + [["mb_k3_e3"]] * 18, "did you mean 'mb_k3_e"),
    ([[]] + [["mb_k3_e3"]] * 18, "non-empty"),
    ([["mb_k3_e3", "mb_k3_e3"]] + [["mb_k3_e3"]] * 18, "twice"),
    ([["skip"]] + [["mb_k3_e3"]] * 18, "cannot keep 'skip'"),
    ([["mb_k3_e3"]] * 18 + [[3]], "unknown op 3"),
])
def test_bad_mobile_genotypes_fail_with_one_line(layers, message: str) -> None:
    with pytest.raises(UserError, match=message) as exc:
        make_mobile_genotype(layers)
    assert "\n" not in str(exc.value)


def test_bad_mobile_genotype_json(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown keys: cells"):
        get_genotype('{"form": "mobile", "layers": [], "cells": 1}')
    with pytest.raises(UserError, match="missing 'layers'"):
        get_genotype('{"form": "mobile"}')


# ----- FLOPs and params -----------------------------------------------------------------------
def _layout_cost(layers: list[list[str]], size: int = 224, classes: int = 1000) -> tuple[int, int]:
    """MACs (conv + linear, BN excluded) and params (BN affine included) by the layout's
    arithmetic alone, independent of the network code (``shared/s2/README.md``)."""
    hw = size // 2
    macs = 3 * 32 * 9 * hw * hw + 32 * 9 * hw * hw + 32 * 16 * hw * hw
    params = 3 * 32 * 9 + 2 * 32 + 32 * 9 + 2 * 32 + 32 * 16 + 2 * 16
    for spec, ops in zip(layer_specs(), layers):
        out = hw // spec.stride
        for name in ops:
            if name == "skip":
                continue
            k, e = parse_mb(name)
            h = round(spec.c_in * e)
            macs += spec.c_in * h * hw * hw + h * k * k * out * out + h * spec.c_out * out * out
            params += spec.c_in * h + 2 * h + h * k * k + 2 * h + h * spec.c_out + 2 * spec.c_out
        hw = out
    macs += 320 * 1280 * hw * hw + 1280 * classes
    params += 320 * 1280 + 2 * 1280 + 1280 * classes + classes
    return macs, params


@pytest.mark.parametrize("name", NETWORKS)
def test_fairnas_macs_and_params_match_the_published_counts(name: str) -> None:
    ref = REFERENCE["networks"][name]
    cost = count_flops_params(fairdarts.build_network(name, num_classes=1000), (1, 3, 224, 224))
    assert (cost.flops, cost.params) == (ref["thop_macs_no_bn"], ref["thop_params"])  # FairNAS' own code, thop
    assert cost.params_no_bn == ref["params_no_bn"]
    assert _layout_cost([[f"mb_k{c[1]}_e{c[3]}"] for c in ref["choice_string"].split()]) == (cost.flops, cost.params)
    published = ref["published"]
    assert abs(cost.flops / 1e6 - published["macs_M"]) / published["macs_M"] < 0.01
    # Published params are rounded to 0.1M; both counts are within 1% plus that rounding.
    for params in (cost.params, cost.params_no_bn):
        assert abs(params / 1e6 - published["params_M"]) <= 0.01 * published["params_M"] + 0.05


@pytest.mark.parametrize("seed", range(4))
def test_random_single_op_genotypes_match_the_layout_arithmetic(seed: int, tmp_path: Path) -> None:
    from fairdarts.summary import summarize
    layers = [[name] for name in random.Random(seed).choices(MB_OPS, k=N_LAYERS)]
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"form": "mobile", "layers": layers}))
    row = summarize(str(path))  # what `python -m fairdarts.summary --arch g.json` prints: 224 px, 1000 classes
    assert (row.flops, row.params, row.image_size) == (*_layout_cost(layers), 224)


def test_summary_cli_counts_fairnas_a_at_224(capsys) -> None:
    from fairdarts.summary import main
    assert main(["--arch", "FairNAS_A", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["flops"], row["params"], row["image_size"]) == (388122848, 4651352, 224)


def test_small_inputs_and_width() -> None:
    for size in (32, 64):
        net = fairdarts.build_network("FairNAS_C", num_classes=10, width_mult=0.25, in_channels=1)
        logits, aux = net(torch.randn(2, 1, size, size))
        assert logits.shape == (2, 10) and aux is None
    assert all(op in MOBILE_OPS for op in MB_OPS)


def test_both_supernets_satisfy_the_search_protocol() -> None:
    from fairdarts.search.spaces import SearchSupernet
    assert isinstance(MobileSupernet(3, width_mult=0.25), SearchSupernet)
    assert isinstance(fairdarts.build_supernet(init_channels=4, layers=3), SearchSupernet)
