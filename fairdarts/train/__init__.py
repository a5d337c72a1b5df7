"""Retraining of derived networks (``python train.py``)."""
from fairdarts.train.config import DATASET_DEFAULTS, TrainConfig

__all__ = ["DATASET_DEFAULTS", "TrainConfig"]
