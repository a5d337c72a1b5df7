"""Candidate ops, gates, mixed ops and the supernet."""
from __future__ import annotations

import pytest
import torch

import fairdarts
from fairdarts.search_space import (
    DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES, OPS, MixedOp, Supernet, apply_gate, build_op, resolve_primitives,
)
from fairdarts.errors import UserError


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_output_shape(name: str, stride: int) -> None:
    op = build_op(name, 8, stride)
    y = op(torch.randn(2, 8, 12, 12))
    assert y.shape == (2, 8, 12 // stride, 12 // stride)


def test_op_keys_match_official_layout() -> None:
    assert {k for k in build_op("sep_conv_3x3", 4, 1).state_dict() if k.endswith("weight")} == {
        "op.1.weight", "op.2.weight", "op.3.weight", "op.5.weight", "op.6.weight", "op.7.weight"}
    assert {k for k in build_op("dil_conv_5x5", 4, 2).state_dict() if k.endswith("weight")} == {
        "op.1.weight", "op.2.weight", "op.3.weight"}
    assert {k.split(".")[0] for k in build_op("skip_connect", 4, 2).state_dict()} == {"conv_1", "conv_2", "bn"}


def test_leading_relu_off_keeps_keys_and_reads_input_as_is() -> None:
    with_relu = build_op("sep_conv_3x3", 4, 1)
    without = build_op("sep_conv_3x3", 4, 1, leading_relu=False)
    assert with_relu.state_dict().keys() == without.state_dict().keys()
    without.load_state_dict(with_relu.state_dict())
    x = torch.randn(2, 4, 8, 8)
    with_relu.eval(), without.eval()
    torch.testing.assert_close(with_relu(x), without(torch.relu(x)))


def test_primitive_sets() -> None:
    assert len(FAIRDARTS_PRIMITIVES) == 7 and "none" not in FAIRDARTS_PRIMITIVES
    assert len(DARTS_PRIMITIVES) == 8 and DARTS_PRIMITIVES[0] == "none"
    assert resolve_primitives("sep_conv_3x3,skip_connect") == ("sep_conv_3x3", "skip_connect")
    with pytest.raises(UserError, match="unknown"):
        resolve_primitives(["sep_conv_3x3", "conv_9x9"])


def test_softmax_rows_sum_to_one_and_sigmoid_is_independent() -> None:
    alphas = torch.randn(14, 7)
    torch.testing.assert_close(apply_gate(alphas, "softmax").sum(-1), torch.ones(14))
    changed = alphas.clone()
    changed[3, 2] += 5.0
    s0, s1 = apply_gate(alphas, "sigmoid"), apply_gate(changed, "sigmoid")
    diff = (s0 != s1)
    assert diff.sum() == 1 and diff[3, 2]
    soft_diff = apply_gate(alphas, "softmax") != apply_gate(changed, "softmax")
    assert soft_diff[3].all() and soft_diff.sum() == 7


def test_mixed_op_is_the_weighted_sum_of_its_ops() -> None:
    torch.manual_seed(0)
    mixed = MixedOp(4, 1, DARTS_PRIMITIVES).eval()
    x = torch.randn(2, 4, 8, 8)
    w = torch.rand(len(DARTS_PRIMITIVES))
    expected = 0
    for k, name in enumerate(DARTS_PRIMITIVES):
        op = mixed._ops[k]
        reads_relu = name.startswith(("sep", "dil"))
        expected = expected + w[k] * op(torch.relu(x) if reads_relu else x)
    torch.testing.assert_close(mixed(x, torch.relu(x), w), expected)


@pytest.mark.parametrize("gate,primitives", [("sigmoid", "fairdarts"), ("softmax", "darts")])
def test_supernet_forward_backward_reaches_both_alphas(gate: str, primitives: str) -> None:
    torch.manual_seed(0)
    net = fairdarts.build_supernet(gate=gate, primitives=primitives, init_channels=4, layers=3, num_classes=5)
    assert [tuple(a.shape) for a in net.arch_parameters()] == [(14, len(resolve_primitives(primitives)))] * 2
    logits = net(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 5)
    logits.logsumexp(-1).sum().backward()
    for a in net.arch_parameters():
        assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.weight_parameters() if p.requires_grad)
    n_weights = sum(1 for _ in net.weight_parameters())
    assert n_weights + 2 == len(list(net.parameters()))


def test_supernet_alpha_init_follows_the_papers() -> None:
    fair = fairdarts.build_supernet("sigmoid", "fairdarts", 4, 3)
    assert all((a == 0).all() for a in fair.arch_parameters())  # every gate starts at 0.5
    darts = fairdarts.build_supernet("softmax", "darts", 4, 3)
    assert all(0 < a.abs().max() < 1e-2 for a in darts.arch_parameters())  # 1e-3 * randn


def test_supernet_takes_one_channel_images() -> None:
    net = fairdarts.build_supernet("sigmoid", "fairdarts", 4, 3, num_classes=10, in_channels=1)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_supernet_rejects_unknown_gate() -> None:
    with pytest.raises(ValueError, match="gate"):
        Supernet(4, 10, 3, FAIRDARTS_PRIMITIVES, gate="relu")  # type: ignore[arg-type]


@pytest.mark.parametrize("c_in,c_out", [(6, 4), (4, 4), (2, 2), (16, 16)])
def test_factorized_reduce_channels_last_equals_contiguous(c_in: int, c_out: int) -> None:
    """The stride-2 skip in channels-last (the CPU search's layout) gives the numbers of the plain
    stride-2 convs, forward and backward, and survives repeated calls: oneDNN's own channels-last
    stride-2 1x1 kernel corrupted the heap here at 6 -> 2 channels (the process aborted within
    a few calls), so FactorizedReduce convolves every second pixel instead."""
    from fairdarts.search_space.operations import FactorizedReduce

    torch.manual_seed(0)
    op = FactorizedReduce(c_in, c_out, affine=False, leading_relu=False).double()
    for px in (8, 7, 4, 2):
        for _ in range(10):
            x = torch.randn(4, c_in, px, px, dtype=torch.float64)
            outs = []
            for fmt in (torch.channels_last, torch.contiguous_format):
                xi = x.contiguous(memory_format=fmt).requires_grad_()
                y = op(xi)
                (gx,) = torch.autograd.grad(y, xi, torch.ones_like(y))
                outs.append((y.detach(), gx))
            for a, b in zip(*outs):
                assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
