"""fairdarts: Fair DARTS and DARTS search, retraining and evaluation.

The public API for notebooks and other tools::

    import fairdarts
    g = fairdarts.get_genotype("FairDARTS_a")
    net = fairdarts.build_network(g, init_channels=36, layers=20)
    logits, logits_aux = net(x)
    cost = fairdarts.count_flops_params(net, (1, 3, 32, 32))
    supernet = fairdarts.build_supernet(gate="sigmoid", primitives="fairdarts")
    edges = fairdarts.derive(weights, fairdarts.FAIRDARTS_PRIMITIVES, "threshold_sparse", 0.85)
    mobile = fairdarts.build_network("FairNAS_A", num_classes=1000)   # search space S2
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from fairdarts.errors import UserError
from fairdarts.flops import ModelCost, count_flops_params
from fairdarts.search_space import (
    DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES, Genotype, MobileGenotype, NetworkSpec, Supernet, derive, get_genotype,
    network_spec, registered_names, resolve_primitives,
)

__version__ = "0.1.0"


def build_network(genotype: "Genotype | MobileGenotype | str", init_channels: int = 36, layers: int = 20,
                  num_classes: int = 10, auxiliary: bool = False, dataset: str = "cifar10",
                  in_channels: int = 3, image_size: int | None = None, width_mult: float = 1.0,
                  dropout: float = 0.2) -> nn.Module:
    """The derived network of a genotype (a Genotype, a name, a JSON file or the official text).

    ``dataset="imagenet"`` builds the ImageNet network; anything else the CIFAR one. A mobile
    genotype (search space S2) builds its MobileNetV2-like network at ``width_mult`` with head
    ``dropout``; the cell sizes, auxiliary head and dataset do not apply to it.
    """
    if init_channels < 1 or layers < 1 or num_classes < 1:
        raise UserError(f"network sizes must be positive, got init_channels={init_channels}, "
                        f"layers={layers}, num_classes={num_classes}")
    g = get_genotype(genotype)
    if isinstance(g, MobileGenotype) and width_mult <= 0:
        raise UserError(f"width_mult must be positive, got {width_mult}")
    imagenet = dataset == "imagenet"
    spec = NetworkSpec.of(g, num_classes, in_channels, image_size or (224 if imagenet else 32), init_channels, layers,
                          auxiliary, imagenet, width_mult, dropout)
    return network_spec.build_network(spec)


def build_supernet(gate: str = "sigmoid", primitives: "str | Sequence[str]" = "fairdarts",
                   init_channels: int = 16, layers: int = 8, num_classes: int = 10,
                   in_channels: int = 3, steps: int = 4, multiplier: int = 4) -> Supernet:
    """The search supernet: ``sigmoid`` gate for Fair DARTS, ``softmax`` for DARTS."""
    return Supernet(init_channels, num_classes, layers, resolve_primitives(primitives), gate=gate,
                    steps=steps, multiplier=multiplier, in_channels=in_channels)


__all__ = [
    "build_network", "build_supernet", "count_flops_params", "derive", "get_genotype",
    "registered_names", "Genotype", "MobileGenotype", "ModelCost", "NetworkSpec", "UserError", "DARTS_PRIMITIVES",
    "FAIRDARTS_PRIMITIVES",
]
