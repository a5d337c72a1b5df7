"""How much memory a training step of a network needs at least, computed from its sizes alone.

``--init_channels 100000`` or ``--batch_size 10**6`` would otherwise fail deep in PyTorch with
an out-of-memory trace (or the machine would swap for minutes). :func:`training_memory`
adds up, without building anything, two lower bounds:

* activations: one feature map per op output per image (each op's output is kept for the
  backward pass of the sum it feeds), plus the cell inputs, at float32;
* weights: the pointwise and stem convolutions' parameters (the largest ones; depthwise
  kernels, BatchNorm and the classifier are left out), each with its gradient and momentum.

:func:`check_fits` compares them with the memory the device has free and refuses a run that
cannot fit with one line. Both bounds are below the true use, so a run that would fit is
never refused.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

from fairdarts.errors import UserError
from fairdarts.search_space.genotypes import Genotype
from fairdarts.search_space.mobile_genotype import MobileGenotype, layer_specs, parse_mb
from fairdarts.search_space.topology import num_edges, reduction_layers

FLOAT_BYTES = 4
#: Weights, gradients and SGD momentum: three copies of every parameter.
WEIGHT_COPIES = 3
#: Pointwise (1 x 1, or 7 x 1 and 1 x 7) weights of an op, in multiples of C x C.
_POINTWISE = {"sep_conv_3x3": 2, "sep_conv_5x5": 2, "sep_conv_7x7": 2, "dil_conv_3x3": 1, "dil_conv_5x5": 1,
              "conv_7x1_1x7": 14}


@dataclass(frozen=True)
class Memory:
    """Lower bounds, in bytes, of one training step's activations and of the weights' copies."""

    activations: int
    weights: int

    @property
    def total(self) -> int:
        return self.activations + self.weights


def _cells_memory(cells: Sequence[tuple[Sequence[str], int]], init_channels: int, layers: int, image_size: int,
                  imagenet: bool) -> tuple[int, int]:
    """(activation elements per image, pointwise parameters) of ``layers`` stacked cells, sized as
    :class:`~fairdarts.search_space.networks.NetworkCIFAR` / the supernet. ``cells`` holds, for
    the normal and the reduction cell, the ops of its edges and the nodes it concatenates."""
    size = -(-image_size // 8) if imagenet else image_size
    c, c_prev = init_channels, (1 if imagenet else 3) * init_channels
    elements, params = (0 if imagenet else c_prev * image_size ** 2), 0
    for i in range(layers):
        reduction = i in reduction_layers(layers)
        if reduction:
            c, size = 2 * c, -(-size // 2)
        ops, nodes = cells[1 if reduction else 0]
        new_maps = sum(op not in ("none", "skip_connect") for op in ops) + 2  # op outputs, preprocessed inputs
        elements += new_maps * c * size * size
        params += sum(_POINTWISE.get(op, 0) for op in ops) * c * c + 2 * min(c_prev, c) * c
        c_prev = max(nodes, 1) * c
    return elements, params


def _mobile_memory(layers: Sequence[Sequence[str]], width_mult: float, image_size: int) -> tuple[int, int]:
    """(activation elements per image, pointwise parameters) of the 19 searchable S2 layers."""
    size, elements, params = -(-image_size // 2), 0, 0
    for spec, ops in zip(layer_specs(width_mult), layers):
        out = -(-size // spec.stride)
        for op in ops:
            if op == "skip":
                continue
            hidden = spec.c_in * parse_mb(op)[1]
            elements += hidden * (size * size + out * out) + spec.c_out * out * out
            params += hidden * (spec.c_in + spec.c_out)
        size = out
    return elements, params


def training_memory(arch: Genotype | MobileGenotype | Sequence[str], batch: int, image_size: int,
                    init_channels: int = 16, layers: int = 8, width_mult: float = 1.0,
                    imagenet: bool = False) -> Memory:
    """The lower bounds of a training step at ``batch`` images of ``image_size`` pixels.

    ``arch``: a derived genotype, or the candidate ops of a supernet (every op on every edge,
    14 edges per cell; for S2 every op on each of the 19 layers)."""
    if isinstance(arch, MobileGenotype):
        elements, params = _mobile_memory(arch.layers, width_mult, image_size)
    elif isinstance(arch, Genotype):
        cells = [([e.op for e in arch.cell(reduction)[0]], len(arch.live_nodes(reduction)))
                 for reduction in (False, True)]
        elements, params = _cells_memory(cells, init_channels, layers, image_size, imagenet)
    elif "mb_k3_e3" in arch:  # the candidate ops of S2
        elements, params = _mobile_memory([list(arch)] * len(layer_specs(width_mult)), width_mult, image_size)
    else:
        ops = list(arch) * num_edges()
        elements, params = _cells_memory([(ops, 4), (ops, 4)], init_channels, layers, image_size, False)
    return Memory(elements * batch * FLOAT_BYTES, params * WEIGHT_COPIES * FLOAT_BYTES)


def available_memory(device: torch.device) -> int | None:
    """Bytes free on ``device``: the GPU's free memory, or the CPU's available memory (within a
    cgroup limit when there is one); ``None`` when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        found += [int(limit)] if limit.isdigit() else []
    except OSError:
        pass
    if not found and hasattr(os, "sysconf"):
        found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(found) if found else None


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB"


def check_training_memory(arch: Genotype | MobileGenotype | Sequence[str], batch: int, image_size: int,
                          device: torch.device, init_channels: int = 16, layers: int = 8, width_mult: float = 1.0,
                          imagenet: bool = False) -> None:
    """Refuse, before anything is allocated, a run whose :func:`training_memory` lower bound
    exceeds the memory ``device`` has free: one line with both numbers and the flags to lower."""
    free = available_memory(device)
    memory = training_memory(arch, batch, image_size, init_channels, layers, width_mult, imagenet)
    if free is None or memory.total <= free:
        return
    mobile = isinstance(arch, MobileGenotype) or (not isinstance(arch, Genotype) and "mb_k3_e3" in arch)
    sizes = (f"--width_mult {width_mult}" if mobile else f"--init_channels {init_channels}, --layers {layers}")
    raise UserError(f"{sizes}, --batch_size {batch} (per device) and {image_size}-pixel images need at least "
                    f"{_gib(memory.total)} ({_gib(memory.activations)} of activations, {_gib(memory.weights)} of "
                    f"weights with their gradients and momentum), more than the {_gib(free)} free on {device}; "
                    "lower them")
