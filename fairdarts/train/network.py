"""What a retraining checkpoint records about its network, and the network rebuilt from it.

Kept apart from the trainer so that evaluation and the download script rebuild networks
without importing the training data pipeline.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from fairdarts.search_space import Genotype, NetworkCIFAR, NetworkImageNet

CHECKPOINT_FORMAT = "fairdarts-train/1"


def network_meta(init_channels: int, layers: int, num_classes: int, in_channels: int, image_size: int,
                 auxiliary: bool, imagenet_net: bool) -> dict[str, Any]:
    """The sizes ``evaluate.py`` needs to rebuild the network (stored in every checkpoint)."""
    return {"init_channels": init_channels, "layers": layers, "num_classes": num_classes,
            "in_channels": in_channels, "image_size": image_size, "auxiliary": auxiliary,
            "imagenet_net": imagenet_net}


def build_network_from_meta(genotype: Genotype, meta: dict[str, Any]) -> nn.Module:
    cls = NetworkImageNet if meta["imagenet_net"] else NetworkCIFAR
    return cls(meta["init_channels"], meta["num_classes"], meta["layers"], meta["auxiliary"], genotype,
               meta["in_channels"], meta["image_size"])
