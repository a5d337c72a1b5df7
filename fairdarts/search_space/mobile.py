"""Search space S2: Fair DARTS on a MobileNetV2-like chain of inverted-bottleneck layers.

The Fair DARTS paper's ImageNet space was never released; this is the layout of the same
authors' FairNAS (``../shared/s2``: stem 3x3 s2 to 32, a fixed separable block to 16, 19
searchable layers in six stages, head 1x1 to 1280, pool, dropout, linear), with the paper's
relaxation: every candidate op of a layer runs and is scaled by its own gate,

    layer(x) = x + sum_k g_k * op_k(x)   on the 13 residual layers (all but a stage's first),
    layer(x) =     sum_k g_k * op_k(x)   on the other 6,

``g = sigmoid(alpha)`` (Fair DARTS) or ``softmax(alpha_layer)`` (DARTS), one alpha per layer
and op. Ops ``mb_k{3,5,7}_e{3,6}``: expand 1x1 to ``round(C_in * e)``, BN, ReLU6, depthwise
k x k (stride of the layer), BN, ReLU6, project 1x1, BN (no activation).

``skip`` (``--mobile_skip``, off by default) is a guess from ProxylessNAS, not from the paper:
an extra choice on the residual layers that contributes nothing to the sum, so a layer that
keeps only ``skip`` is the identity (the network gets shorter). Its gate is 0 on the other
layers. With sigmoid gates its alpha only feels the zero-one loss and weight decay, so it
stays near 0.5: the bar the real ops of its layer must clear to beat it under ``argmax``.
The alphas are one ``[19, n_ops]`` matrix; with ``skip`` the six entries of the layers without
the residual are masked out of the gates (they stay 0 and still count, at sigmoid 0.5 and with
no gradient, in the zero-one loss's mean over all entries).

Memory: the supernet keeps every op's expanded activations for the backward pass, about
six MobileNetV2s' worth. The ops use in-place ReLU6 and each layer sums its gated outputs in
one running ``addcmul`` (no stack of op outputs); see docs/search_spaces.md for the measured bytes per
image at 224 px.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fairdarts.search_space.mobile_genotype import (
    FIRST_BLOCK_CHANNELS, HEAD_CHANNELS, MB_OPS, MOBILE_OPS, N_LAYERS, SKIP, STEM_CHANNELS, LayerSpec,
    MobileGenotype, layer_specs, make_divisible, parse_mb, scaled,
)
from fairdarts.search_space.networks import drop_path
from fairdarts.search_space.supernet import GATES, Gate, apply_gate


def mobile_primitives(skip: bool = False) -> tuple[str, ...]:
    """The op columns of the S2 alphas: six MBConvs, and ``skip`` last when enabled."""
    return MOBILE_OPS if skip else MB_OPS


class MBConv(nn.Module):
    """MobileNetV2's inverted bottleneck without its residual (the layer adds that)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, stride: int):
        super().__init__()
        hidden = round(c_in * expansion)
        self.op = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def build_mb(name: str, spec: LayerSpec) -> MBConv:
    kernel, expansion = parse_mb(name)
    return MBConv(spec.c_in, spec.c_out, kernel, expansion, spec.stride)


class _MobileBody(nn.Module):
    """Stem, fixed first block and head shared by the supernet and the derived networks
    (same module names, so a supernet's weights map onto a derived network one to one)."""

    def __init__(self, num_classes: int, in_channels: int, width_mult: float, dropout: float):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        stem, first = scaled(STEM_CHANNELS, width_mult), scaled(FIRST_BLOCK_CHANNELS, width_mult)
        self.specs = layer_specs(width_mult)
        head = HEAD_CHANNELS if width_mult <= 1.0 else make_divisible(HEAD_CHANNELS * width_mult)
        self.width_mult = width_mult
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem),
                                  nn.ReLU6(inplace=True))
        self.first = nn.Sequential(nn.Conv2d(stem, stem, 3, 1, 1, groups=stem, bias=False), nn.BatchNorm2d(stem),
                                   nn.ReLU6(inplace=True), nn.Conv2d(stem, first, 1, bias=False),
                                   nn.BatchNorm2d(first))
        self.head = nn.Sequential(nn.Conv2d(self.specs[-1].c_out, head, 1, bias=False), nn.BatchNorm2d(head),
                                  nn.ReLU6(inplace=True))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head, num_classes)

    def features_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.first(self.stem(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        # Functional pooling: thop does not count it, like the FairNAS code's x.mean(3).mean(2).
        return self.classifier(self.dropout(self.head(x).mean((2, 3))))


# ----- the supernet -------------------------------------------------------------------------
class MobileMixedLayer(nn.Module):
    """Every candidate op of one layer; output = (x +) sum of gate-weighted op outputs."""

    def __init__(self, spec: LayerSpec, primitives: Sequence[str]):
        super().__init__()
        self.residual = spec.residual
        self._columns = [k for k, name in enumerate(primitives) if name != SKIP]  # skip adds nothing
        self._ops = nn.ModuleList(build_mb(primitives[k], spec) for k in self._columns)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = x if self.residual else None
        for k, op in zip(self._columns, self._ops):
            y = op(x)
            out = weights[k] * y if out is None else torch.addcmul(out, weights[k], y)
        return out


class MobileSupernet(_MobileBody):
    """The S2 search network; the same interface as :class:`~fairdarts.search_space.Supernet`
    (``arch_parameters``, ``weight_parameters``, ``named_weight_parameters``, ``gated_weights``),
    so the search loop, both architects and the zero-one loss run on it unchanged."""

    def __init__(self, num_classes: int, in_channels: int = 3, gate: Gate = "sigmoid", width_mult: float = 1.0,
                 skip: bool = False, alpha_init: str = "auto"):
        super().__init__(num_classes, in_channels, width_mult, dropout=0.0)
        if gate not in GATES:
            raise ValueError(f"unknown gate {gate!r}; use one of {GATES}")
        self.gate = gate
        self.primitives = mobile_primitives(skip)
        self.layers = nn.ModuleList(MobileMixedLayer(spec, self.primitives) for spec in self.specs)
        self.alphas_mobile = nn.Parameter(torch.zeros(N_LAYERS, len(self.primitives)))
        allowed = torch.tensor([[spec.residual or name != SKIP for name in self.primitives] for spec in self.specs])
        # Non-persistent: rebuilt from the layout, never read from a checkpoint.
        self.register_buffer("allowed", allowed, persistent=False)
        self.reset_alphas(alpha_init)

    def reset_alphas(self, init: str = "auto") -> None:
        """``zeros`` (Fair DARTS: every gate at 0.5) or ``randn`` (DARTS: 1e-3 * N(0, 1))."""
        init = ("zeros" if self.gate == "sigmoid" else "randn") if init == "auto" else init
        with torch.no_grad():
            if init == "zeros":
                self.alphas_mobile.zero_()
            elif init == "randn":
                self.alphas_mobile.copy_(1e-3 * torch.randn_like(self.alphas_mobile))
            else:
                raise ValueError(f"unknown alpha init {init!r}; use zeros or randn")

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_mobile]

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_weight_parameters())

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if not n.startswith("alphas_"))

    def gated_weights(self) -> tuple[torch.Tensor]:
        """``([19, n_ops] gate values,)``: one group, the form derivation and plots read.
        ``skip`` is gated to 0 on layers without the residual."""
        if bool(self.allowed.all()):
            return (apply_gate(self.alphas_mobile, self.gate),)
        if self.gate == "softmax":
            return (F.softmax(self.alphas_mobile.masked_fill(~self.allowed, float("-inf")), dim=-1),)
        return (torch.sigmoid(self.alphas_mobile) * self.allowed,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (weights,) = self.gated_weights()
        if x.device.type == "cpu":  # oneDNN's depthwise and BatchNorm kernels are faster in NHWC
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.features_in(x)
        for layer, w in zip(self.layers, weights):
            x = layer(x, w)
        return self.logits(x)


# ----- the derived network ------------------------------------------------------------------
class MobileLayer(nn.Module):
    """A derived layer: the sum of its kept ops (plus x on residual layers); ``skip`` alone is
    the identity. Drop path, when set, drops the summed branch of a residual layer."""

    def __init__(self, spec: LayerSpec, ops: Sequence[str]):
        super().__init__()
        self.residual = spec.residual
        self._ops = nn.ModuleList(build_mb(name, spec) for name in ops if name != SKIP)

    def forward(self, x: torch.Tensor, drop_prob: float) -> torch.Tensor:
        if not self._ops:
            return x
        branch = self._ops[0](x)
        for op in self._ops[1:]:
            branch = branch + op(x)
        if not self.residual:
            return branch
        if self.training and drop_prob > 0:
            branch = drop_path(branch, drop_prob)
        return x + branch


class MobileNetwork(_MobileBody):
    """The network of a mobile genotype: ImageNet size by default (224 px, 1000 classes), any
    input size (stride 32 in all); returns ``(logits, None)`` like the cell networks."""

    def __init__(self, genotype: MobileGenotype, num_classes: int = 1000, in_channels: int = 3,
                 width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__(num_classes, in_channels, width_mult, dropout)
        self.genotype = genotype
        self.drop_path_prob = 0.0
        self.layers = nn.ModuleList(MobileLayer(spec, ops) for spec, ops in zip(self.specs, genotype.layers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = self.features_in(x)
        for layer in self.layers:
            x = layer(x, self.drop_path_prob)
        return self.logits(x), None
