"""What a derived network is made of, and the one function that builds it.

:class:`NetworkSpec` is the typed form of the ``"network"`` record every retraining checkpoint
stores beside its genotype; :meth:`NetworkSpec.to_dict` / :meth:`NetworkSpec.from_dict` write
and read exactly that record (the keys of ``fairdarts-train/1``), so checkpoints written before
the spec existed load unchanged. The public ``fairdarts.build_network``, the trainer and
evaluation all build through :func:`build_network`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from fairdarts.errors import UserError
from fairdarts.search_space.genotypes import Genotype
from fairdarts.search_space.mobile import MobileNetwork
from fairdarts.search_space.mobile_genotype import MobileGenotype
from fairdarts.search_space.networks import NetworkCIFAR, NetworkImageNet


@dataclass(frozen=True)
class NetworkSpec:
    """A genotype with its sizes. Cell networks use ``init_channels``, ``layers``, ``auxiliary``
    and ``imagenet`` (the ImageNet stems); mobile (S2) networks use ``width_mult`` and ``dropout``
    and record the cell-only fields as ``None`` / ``False`` (see :meth:`of`)."""

    genotype: Genotype | MobileGenotype
    num_classes: int
    in_channels: int
    image_size: int
    init_channels: int | None
    layers: int | None
    auxiliary: bool = False
    imagenet: bool = False
    width_mult: float = 1.0
    dropout: float = 0.2

    @property
    def mobile(self) -> bool:
        return isinstance(self.genotype, MobileGenotype)

    @classmethod
    def of(cls, genotype: Genotype | MobileGenotype, num_classes: int, in_channels: int, image_size: int,
           init_channels: int, layers: int, auxiliary: bool, imagenet: bool, width_mult: float = 1.0,
           dropout: float = 0.2) -> "NetworkSpec":
        """The spec of ``genotype`` with only the fields its kind of network uses."""
        if isinstance(genotype, MobileGenotype):
            return cls(genotype, num_classes, in_channels, image_size, None, None, False, False, width_mult, dropout)
        return cls(genotype, num_classes, in_channels, image_size, init_channels, layers, auxiliary, imagenet)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``"network"`` record (the genotype is stored beside it)."""
        if self.mobile:
            return {"mobile": True, "width_mult": self.width_mult, "dropout": self.dropout,
                    "num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size,
                    "auxiliary": False, "imagenet_net": False, "init_channels": None, "layers": None}
        return {"init_channels": self.init_channels, "layers": self.layers, "num_classes": self.num_classes,
                "in_channels": self.in_channels, "image_size": self.image_size, "auxiliary": self.auxiliary,
                "imagenet_net": self.imagenet}

    @classmethod
    def from_dict(cls, genotype: Genotype | MobileGenotype, meta: Mapping[str, Any]) -> "NetworkSpec":
        """The spec of a checkpoint's genotype and ``"network"`` record; they must be of one kind."""
        if isinstance(genotype, MobileGenotype):
            if not meta.get("mobile"):
                raise UserError("a mobile genotype needs a mobile network checkpoint (this one holds a cell network)")
            return cls(genotype, meta["num_classes"], meta["in_channels"], meta["image_size"],
                       meta.get("init_channels"), meta.get("layers"), False, False, meta["width_mult"], meta["dropout"])
        if meta.get("mobile"):
            raise UserError("this checkpoint holds a mobile network; its genotype must be a mobile one")
        return cls(genotype, meta["num_classes"], meta["in_channels"], meta["image_size"], meta["init_channels"],
                   meta["layers"], meta["auxiliary"], meta["imagenet_net"])


def build_network(spec: NetworkSpec) -> nn.Module:
    """The (untrained) network of ``spec``: MobileNetwork, NetworkImageNet or NetworkCIFAR."""
    if isinstance(spec.genotype, MobileGenotype):
        return MobileNetwork(spec.genotype, spec.num_classes, spec.in_channels, spec.width_mult, spec.dropout)
    cls = NetworkImageNet if spec.imagenet else NetworkCIFAR
    return cls(spec.init_channels, spec.num_classes, spec.layers, spec.auxiliary, spec.genotype,
               spec.in_channels, spec.image_size)
