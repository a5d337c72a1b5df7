"""Candidate operations of the DARTS / Fair DARTS search space.

Module structure (ReLU-conv-BN, separable conv applied twice, FactorizedReduce for a
stride-2 skip) and the ``nn.Sequential`` indices follow the official code exactly: the
``state_dict`` keys of a derived network (``op.1.weight``, ``op.3.running_mean`` ...) must
equal the official ones so that published checkpoints load with ``strict=True``.

Every convolutional op starts with a ReLU. The supernet builds its ops with
``leading_relu=False`` and applies one shared ReLU per edge input instead (same mathematics,
one activation instead of six); the ReLU slot then holds an ``nn.Identity`` so the indices,
and hence the keys, do not move. The depthwise convolutions are :class:`DepthwiseConv2d`, an
``nn.Conv2d`` with the same keys whose CPU gradients avoid oneDNN's slow kernels.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from fairdarts.search_space.depthwise import DepthwiseConv2d
from fairdarts.search_space.native.chain import Stage, conv_bn_chains, factorized_reduce, stage_supported

OpFactory = Callable[[int, int, bool, bool], nn.Module]


def _relu(enabled: bool) -> nn.Module:
    return nn.ReLU(inplace=False) if enabled else nn.Identity()


class NativeChains(nn.Module):
    """An op made of ``[ReLU] -> [depthwise] -> 1x1 -> BatchNorm`` chains (``self.op``): where the
    native CPU kernels apply (:mod:`fairdarts.search_space.native.chain`: search training on
    the CPU) they run the whole op as one autograd node; elsewhere ``self.op`` runs as usual."""

    op: nn.Sequential
    #: False: always run ``self.op`` (the benchmark's textbook supernet sets it on its ops)
    native: bool = True

    def stages(self) -> tuple[Stage, ...]:
        raise NotImplementedError

    def native_stages(self) -> tuple[tuple[Stage, ...], bool]:
        """(the stages, whether the kernels support them), checked once: module structure is fixed."""
        cached = self.__dict__.get("_native_stages")
        if cached is None:
            stages = self.stages()
            cached = (stages, all(stage_supported(s) for s in stages))
            self.__dict__["_native_stages"] = cached
        return cached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = conv_bn_chains(x, *self.native_stages()) if self.native else None
        return self.op(x) if y is None else y


class ReLUConvBN(NativeChains):
    """ReLU -> conv -> BN: the preprocessing of cell inputs and the 1x1 convolutions."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True, leading_relu: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            _relu(leading_relu),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def stages(self) -> tuple[Stage, ...]:
        relu, conv, bn = self.op
        return (Stage(None, conv, bn, isinstance(relu, nn.ReLU)),)


class DilConv(NativeChains):
    """ReLU -> dilated depthwise conv -> pointwise conv -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True, leading_relu: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            _relu(leading_relu),
            DepthwiseConv2d(C_in, kernel_size, stride=stride, padding=padding, dilation=dilation),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def stages(self) -> tuple[Stage, ...]:
        relu, dw, pw, bn = self.op
        return (Stage(dw, pw, bn, isinstance(relu, nn.ReLU)),)


class SepConv(NativeChains):
    """Two stacked (ReLU, depthwise, pointwise, BN) blocks; only the first may be strided."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True, leading_relu: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            _relu(leading_relu),
            DepthwiseConv2d(C_in, kernel_size, stride=stride, padding=padding),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            DepthwiseConv2d(C_in, kernel_size, stride=1, padding=padding),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def stages(self) -> tuple[Stage, ...]:
        relu, dw1, pw1, bn1, _, dw2, pw2, bn2 = self.op
        # the ReLU between the halves is read into the second chain
        return Stage(dw1, pw1, bn1, isinstance(relu, nn.ReLU)), Stage(dw2, pw2, bn2, True)


class Conv7x1x1x7(nn.Module):
    """ReLU -> 1x7 conv -> 7x1 conv -> BN (used by NASNet / AmoebaNet cells)."""

    def __init__(self, C: int, stride: int, affine: bool = True, leading_relu: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            _relu(leading_relu),
            nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
            nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
            nn.BatchNorm2d(C, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Identity(nn.Module):
    """The stride-1 skip connection (a class of its own so drop path can recognise it)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero(nn.Module):
    """The ``none`` op of DARTS: a zero tensor of the output shape."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs (the stride-2 skip connection);
    on the native kernels where they apply (:func:`fairdarts.search_space.native.chain.factorized_reduce`)."""

    #: False: always run the modules (the benchmark's textbook supernet sets it)
    native: bool = True

    def __init__(self, C_in: int, C_out: int, affine: bool = True, leading_relu: bool = True):
        super().__init__()
        if C_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {C_out}")
        self.relu = _relu(leading_relu)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:
            y = factorized_reduce(x, self.conv_1.weight, self.conv_2.weight, self.bn, isinstance(self.relu, nn.ReLU))
            if y is not None:  # the native kernels (search training and validation on the CPU)
                return y
        x = self.relu(x)
        # Odd sizes: the shifted branch is one pixel smaller; pad it so both halves agree.
        a = _stride2_pointwise(self.conv_1, x)
        b = _stride2_pointwise(self.conv_2, x[:, :, 1:, 1:])
        if b.shape[-2:] != a.shape[-2:]:
            b = nn.functional.pad(b, (0, a.shape[-1] - b.shape[-1], 0, a.shape[-2] - b.shape[-2]))
        y = torch.cat([a, b], dim=1)
        if x.is_contiguous(memory_format=torch.channels_last):
            # at odd sizes the even half comes back NCHW: keep the layout the native kernels give,
            # since a noisy skip downstream draws its noise in memory order (torch.randn_like)
            y = y.contiguous(memory_format=torch.channels_last)
        return self.bn(y)


def _stride2_pointwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a bias-free 1x1 stride-2 conv. On the CPU in channels-last it runs as the
    1x1 conv of every second pixel (the same numbers: a 1x1 conv mixes channels only), because
    oneDNN's channels-last stride-2 1x1 kernel corrupts the heap at small channel counts on some
    CPUs (seen on an AMD EPYC with torch 2.14.1: 6 -> 2 channels aborts within a few calls;
    tests/test_operations.py holds the workaround)."""
    if x.device.type == "cpu" and x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1:
        return nn.functional.conv2d(x[:, :, ::2, ::2], conv.weight)
    return conv(x)


def _skip(C: int, stride: int, affine: bool, leading_relu: bool) -> nn.Module:
    return Identity() if stride == 1 else FactorizedReduce(C, C, affine, leading_relu)


OPS: dict[str, OpFactory] = {
    "none": lambda C, stride, affine, relu: Zero(stride),
    "avg_pool_3x3": lambda C, stride, affine, relu: nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine, relu: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda C, stride, affine, relu: SepConv(C, C, 3, stride, 1, affine, relu),
    "sep_conv_5x5": lambda C, stride, affine, relu: SepConv(C, C, 5, stride, 2, affine, relu),
    "sep_conv_7x7": lambda C, stride, affine, relu: SepConv(C, C, 7, stride, 3, affine, relu),
    "dil_conv_3x3": lambda C, stride, affine, relu: DilConv(C, C, 3, stride, 2, 2, affine, relu),
    "dil_conv_5x5": lambda C, stride, affine, relu: DilConv(C, C, 5, stride, 4, 2, affine, relu),
    "conv_7x1_1x7": lambda C, stride, affine, relu: Conv7x1x1x7(C, stride, affine, relu),
}

#: Ops whose first layer is a ReLU (the supernet shares one ReLU per edge input among them).
RELU_LEADING_OPS = frozenset(
    {"sep_conv_3x3", "sep_conv_5x5", "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7"}
)

#: The Fair DARTS candidate set: 7 ops, no ``none`` (fairdarts/genotypes.py).
FAIRDARTS_PRIMITIVES: tuple[str, ...] = (
    "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
    "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)
#: The DARTS candidate set: the same 7 plus ``none`` first (cnn/genotypes.py).
DARTS_PRIMITIVES: tuple[str, ...] = ("none",) + FAIRDARTS_PRIMITIVES

PRIMITIVE_SETS: dict[str, tuple[str, ...]] = {"fairdarts": FAIRDARTS_PRIMITIVES, "darts": DARTS_PRIMITIVES}


def build_op(name: str, C: int, stride: int, affine: bool = True, leading_relu: bool = True) -> nn.Module:
    """Instantiate candidate op ``name`` for ``C`` channels (``leading_relu`` only matters for convs)."""
    try:
        factory = OPS[name]
    except KeyError:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(OPS)}") from None
    return factory(C, stride, affine, leading_relu)


def resolve_primitives(primitives: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """A named set (``fairdarts``, ``darts``) or an explicit list of op names, validated."""
    from fairdarts.errors import UserError

    if isinstance(primitives, str):
        if primitives in PRIMITIVE_SETS:
            return PRIMITIVE_SETS[primitives]
        primitives = [p.strip() for p in primitives.split(",") if p.strip()]
    names = tuple(primitives)
    unknown = [n for n in names if n not in OPS]
    if unknown or not names:
        raise UserError(
            f"unknown primitive set or op {unknown or names!r}; use 'fairdarts', 'darts' or a "
            f"comma-separated list of: {', '.join(OPS)}"
        )
    if len(set(names)) != len(names):
        raise UserError(f"primitive list has duplicates: {', '.join(names)}")
    return names
