"""What a retraining checkpoint records about its network, and the network rebuilt from it.

Kept apart from the trainer so that evaluation and the download script rebuild networks
without importing the training data pipeline.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from fairdarts.errors import UserError

from fairdarts.search_space import Genotype, MobileGenotype, MobileNetwork, NetworkCIFAR, NetworkImageNet

CHECKPOINT_FORMAT = "fairdarts-train/1"


def network_meta(init_channels: int, layers: int, num_classes: int, in_channels: int, image_size: int,
                 auxiliary: bool, imagenet_net: bool) -> dict[str, Any]:
    """The sizes ``evaluate.py`` needs to rebuild the network (stored in every checkpoint)."""
    return {"init_channels": init_channels, "layers": layers, "num_classes": num_classes,
            "in_channels": in_channels, "image_size": image_size, "auxiliary": auxiliary,
            "imagenet_net": imagenet_net}


def mobile_meta(num_classes: int, in_channels: int, image_size: int, width_mult: float,
                dropout: float) -> dict[str, Any]:
    """The same record for a mobile (S2) network: no cells, no auxiliary head."""
    return {"mobile": True, "width_mult": width_mult, "dropout": dropout, "num_classes": num_classes,
            "in_channels": in_channels, "image_size": image_size, "auxiliary": False, "imagenet_net": False,
            "init_channels": None, "layers": None}


def build_network_from_meta(genotype: Genotype | MobileGenotype, meta: dict[str, Any]) -> nn.Module:
    if isinstance(genotype, MobileGenotype):
        if not meta.get("mobile"):
            raise UserError("a mobile genotype needs a mobile network checkpoint (this one holds a cell network)")
        return MobileNetwork(genotype, meta["num_classes"], meta["in_channels"], meta["width_mult"], meta["dropout"])
    if meta.get("mobile"):
        raise UserError("this checkpoint holds a mobile network; its genotype must be a mobile one")
    cls = NetworkImageNet if meta["imagenet_net"] else NetworkCIFAR
    return cls(meta["init_channels"], meta["num_classes"], meta["layers"], meta["auxiliary"], genotype,
               meta["in_channels"], meta["image_size"])
