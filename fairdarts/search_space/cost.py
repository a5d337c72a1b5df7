"""FLOPs and parameters of a derived cell network, counted from its genotype without building it.

:func:`fairdarts.flops.count_flops_params` builds the network and runs thop over one forward
pass: seconds for a 36-channel, 20-layer CIFAR network, far too slow for the random search's
FLOPs filter, which looks at hundreds of samples. :func:`network_cost` adds up the same layers
by hand, following thop's rules as :mod:`fairdarts.flops` configures them, and returns the same
integers (``tests/test_search_space_cost.py`` checks every registered genotype against thop):

* a convolution: output elements x (input channels / groups) x kernel area (no bias term);
* a linear layer: input features x output features; an average pool: one per output element;
  an adaptive average pool: (input area / output area + 1) per output element;
* BatchNorm, ReLU, max pooling, identities, the ``none`` op, padding and concatenation: 0;
* a module that does not run in the eval-mode forward counts no FLOPs but its parameters: the
  auxiliary head, and a Fair DARTS op whose input node does not exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fairdarts.errors import UserError
from fairdarts.search_space.genotypes import Genotype, get_genotype

Size = tuple[int, int]  # (height, width) of a feature map


@dataclass(frozen=True)
class ModelCost:
    """A network's thop multiply-adds (BatchNorm excluded) and parameter counts: with everything,
    without the auxiliary head, without BatchNorm. Defined here, below :mod:`fairdarts.flops`,
    because both the analytic count and thop's return it."""

    flops: int
    params: int
    params_no_aux: int
    params_no_bn: int


@dataclass(frozen=True)
class _Cost:
    """FLOPs and parameters of some layers; ``bn`` counts the BatchNorm parameters among them."""

    flops: int = 0
    params: int = 0
    bn: int = 0

    def __add__(self, other: _Cost) -> _Cost:
        return _Cost(self.flops + other.flops, self.params + other.params, self.bn + other.bn)

    def idle(self) -> _Cost:
        """The layers built but not run in the forward pass: parameters only."""
        return _Cost(0, self.params, self.bn)


def _out(n: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    """Output length of a convolution or pooling along one axis (PyTorch's formula, floor mode)."""
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv(c_in: int, c_out: int, size: Size, kernel: Size, stride: Size = (1, 1), padding: Size = (0, 0),
          dilation: int = 1, groups: int = 1) -> tuple[_Cost, Size]:
    """A bias-free ``nn.Conv2d`` (thop's ``count_convNd``) and its output size."""
    out = tuple(_out(n, k, s, p, dilation) for n, k, s, p in zip(size, kernel, stride, padding))
    weights = c_out * (c_in // groups) * kernel[0] * kernel[1]
    return _Cost(out[0] * out[1] * weights, weights), (out[0], out[1])


def _bn(channels: int) -> _Cost:
    """An affine ``BatchNorm2d``: counted as 0 FLOPs (left out, as in the papers)."""
    return _Cost(0, 2 * channels, 2 * channels)


def _square(n: int) -> Size:
    return (n, n)


def _relu_conv_bn(c_in: int, c_out: int, size: Size) -> tuple[_Cost, Size]:
    """``ReLUConvBN`` with a 1x1 kernel: the preprocessing of a cell input."""
    conv, out = _conv(c_in, c_out, size, (1, 1))
    return conv + _bn(c_out), out


def _factorized_reduce(c_in: int, c_out: int, size: Size) -> tuple[_Cost, Size]:
    """Two stride-2 1x1 convs, the second on the input shifted by one pixel (smaller when odd)."""
    a, out = _conv(c_in, c_out // 2, size, (1, 1), (2, 2))
    b, _ = _conv(c_in, c_out // 2, (size[0] - 1, size[1] - 1), (1, 1), (2, 2))
    return a + b + _bn(c_out), out


def _dil_conv(c: int, size: Size, k: int, stride: int, padding: int, dilation: int) -> tuple[_Cost, Size]:
    """Depthwise (dilated) k x k conv, pointwise conv, BN: ``DilConv`` and half a ``SepConv``."""
    depthwise, out = _conv(c, c, size, _square(k), _square(stride), _square(padding), dilation, groups=c)
    pointwise, out = _conv(c, c, out, (1, 1))
    return depthwise + pointwise + _bn(c), out


def _sep_conv(c: int, size: Size, k: int, stride: int) -> tuple[_Cost, Size]:
    """``SepConv``: two depthwise-pointwise-BN blocks, only the first strided."""
    first, out = _dil_conv(c, size, k, stride, k // 2, 1)
    second, out = _dil_conv(c, out, k, 1, k // 2, 1)
    return first + second, out


def _conv_7x1_1x7(c: int, size: Size, stride: int) -> tuple[_Cost, Size]:
    """1x7 then 7x1 conv: the first strides the width only, so the second sees a non-square map."""
    wide, out = _conv(c, c, size, (1, 7), (1, stride), (0, 3))
    tall, out = _conv(c, c, out, (7, 1), (stride, 1), (3, 0))
    return wide + tall + _bn(c), out


def _pool(c: int, size: Size, stride: int, average: bool) -> tuple[_Cost, Size]:
    """3x3 pooling with padding 1: an average costs one FLOP per output element, a max none."""
    out = (_out(size[0], 3, stride, 1), _out(size[1], 3, stride, 1))
    return _Cost(c * out[0] * out[1] if average else 0), out


def _skip(c: int, size: Size, stride: int) -> tuple[_Cost, Size]:
    return (_Cost(), size) if stride == 1 else _factorized_reduce(c, c, size)


def _none(size: Size, stride: int) -> tuple[_Cost, Size]:
    """The ``none`` op: a strided slice times zero, which thop does not see."""
    return _Cost(), (size if stride == 1 else ((size[0] + 1) // 2, (size[1] + 1) // 2))


_OPS: dict[str, Callable[[int, Size, int], tuple[_Cost, Size]]] = {
    "none": lambda c, size, stride: _none(size, stride),
    "avg_pool_3x3": lambda c, size, stride: _pool(c, size, stride, True),
    "max_pool_3x3": lambda c, size, stride: _pool(c, size, stride, False),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, size, stride: _sep_conv(c, size, 3, stride),
    "sep_conv_5x5": lambda c, size, stride: _sep_conv(c, size, 5, stride),
    "sep_conv_7x7": lambda c, size, stride: _sep_conv(c, size, 7, stride),
    "dil_conv_3x3": lambda c, size, stride: _dil_conv(c, size, 3, stride, 2, 2),
    "dil_conv_5x5": lambda c, size, stride: _dil_conv(c, size, 5, stride, 4, 2),
    "conv_7x1_1x7": _conv_7x1_1x7,
}


def _runs(genotype: Genotype, reduction: bool) -> list[bool]:
    """Which edges the derived cell runs: all in the DARTS forms; in the Fair DARTS form only those
    whose input exists when their node is computed (inputs 0 and 1, or a live node of lower index)."""
    edges, _ = genotype.cell(reduction)
    if genotype.form != "fairdarts":
        return [True] * len(edges)
    live = set(genotype.live_nodes(reduction))
    return [e.src < 2 or (e.src in live and e.src < e.to) for e in edges]


def _cell(genotype: Genotype, c: int, reduction: bool, inputs: list[tuple[Size, int]],
          reduction_prev: bool) -> tuple[_Cost, Size, int]:
    """A cell's cost, output size and output channels; ``inputs`` are (size, channels) of s0, s1."""
    (size0, c0), (size1, c1) = inputs
    pre0, size0 = _factorized_reduce(c0, c, size0) if reduction_prev else _relu_conv_bn(c0, c, size0)
    pre1, size1 = _relu_conv_bn(c1, c, size1)
    total, sizes = pre0 + pre1, {0: size0, 1: size1}
    edges, _ = genotype.cell(reduction)
    for edge, runs in zip(edges, _runs(genotype, reduction)):
        src_size = sizes.get(edge.src, size1)  # an edge that does not run has no input: any size will do
        cost, out = _OPS[edge.op](c, src_size, 2 if reduction and edge.src < 2 else 1)
        total += cost if runs else cost.idle()
        if runs:
            sizes.setdefault(edge.to, out)
    nodes = genotype.live_nodes(reduction)
    if not nodes:
        raise UserError(f"the genotype's {'reduction' if reduction else 'normal'} cell has no edges")
    return total, sizes[nodes[0]], len(nodes) * c


def _cifar_stem(c: int, in_channels: int, image_size: int) -> tuple[_Cost, list[tuple[Size, int]]]:
    """3x3 conv to 3C channels and BN; the cells start on two copies of its output."""
    cost, size = _conv(in_channels, 3 * c, _square(image_size), (3, 3), padding=(1, 1))
    return cost + _bn(3 * c), [(size, 3 * c), (size, 3 * c)]


def _imagenet_stem(c: int, in_channels: int, image_size: int) -> tuple[_Cost, list[tuple[Size, int]]]:
    """Three stride-2 3x3 convs (C/2, C, C channels), each with BN; s0 after two, s1 after three."""
    conv0, size = _conv(in_channels, c // 2, _square(image_size), (3, 3), (2, 2), (1, 1))
    conv1, size0 = _conv(c // 2, c, size, (3, 3), (2, 2), (1, 1))
    conv2, size1 = _conv(c, c, size0, (3, 3), (2, 2), (1, 1))
    return conv0 + conv1 + conv2 + _bn(c // 2) + _bn(c) + _bn(c), [(size0, c), (size1, c)]


def _cells(genotype: Genotype, c: int, layers: int, states: list[tuple[Size, int]],
           reduction_prev: bool) -> tuple[_Cost, tuple[Size, int], int]:
    """The stacked cells: their cost, the last one's (size, channels), the auxiliary head's input channels.

    Reductions (channels doubled) at ``layers // 3`` and ``2 * layers // 3``; the auxiliary head
    reads the second one's output, as in :class:`fairdarts.search_space.networks.NetworkCIFAR`.
    """
    reductions = (layers // 3, 2 * layers // 3)
    total, c_aux = _Cost(), states[1][1]
    for i in range(layers):
        reduction = i in reductions
        c = 2 * c if reduction else c
        cost, size, c_out = _cell(genotype, c, reduction, states, reduction_prev)
        total += cost
        states, reduction_prev = [states[1], (size, c_out)], reduction
        if i == reductions[1]:
            c_aux = c_out
    return total, states[1], c_aux


def _auxiliary_head(c_in: int, num_classes: int, imagenet: bool) -> _Cost:
    """1x1 conv to 128, BN, 2x2 conv to 768, BN (not on ImageNet), linear: parameters only, since
    the head does not run in eval mode."""
    convs = _Cost(0, c_in * 128 + 128 * 768 * 4) + _bn(128) + (_Cost() if imagenet else _bn(768))
    return convs + _Cost(0, 768 * num_classes + num_classes)


def network_cost(genotype: Genotype | str, init_channels: int = 36, layers: int = 20, num_classes: int = 10,
                 auxiliary: bool = False, dataset: str = "cifar10", in_channels: int = 3,
                 image_size: int | None = None) -> ModelCost:
    """What ``count_flops_params(build_network(...), (1, in_channels, size, size))`` returns for the
    same arguments (those of :func:`fairdarts.build_network`), in about a millisecond instead of seconds."""
    g = get_genotype(genotype)
    if not isinstance(g, Genotype):
        raise UserError("network_cost counts cell networks; count a mobile network with count_flops_params")
    if layers < 3:
        raise UserError(f"--layers must be at least 3 (two reduction cells and one normal), got {layers}")
    imagenet = dataset == "imagenet"
    size = image_size or (224 if imagenet else 32)
    stem, states = (_imagenet_stem if imagenet else _cifar_stem)(init_channels, in_channels, size)
    cells, (final_size, c_final), c_aux = _cells(g, init_channels, layers, states, reduction_prev=imagenet)
    pooling = _Cost((final_size[0] * final_size[1] + 1) * c_final)  # AdaptiveAvgPool2d(1)
    classifier = _Cost(c_final * num_classes, c_final * num_classes + num_classes)
    net = stem + cells + pooling + classifier
    whole = net + (_auxiliary_head(c_aux, num_classes, imagenet) if auxiliary else _Cost())
    return ModelCost(flops=net.flops, params=whole.params, params_no_aux=net.params,
                     params_no_bn=whole.params - whole.bn)
