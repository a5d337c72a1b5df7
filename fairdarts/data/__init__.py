"""Datasets in their real on-disk formats, batched augmentation on the device, resumable loaders."""
from fairdarts.data.augment import BatchAugment, normalize
from fairdarts.data.datasets import (
    DATASET_CHOICES, DATASETS, KNOWN_NAMES, DatasetInfo, InMemoryImages, load_dataset, load_image_folder,
    make_synthetic, read_idx, resize_images, split_train_portion,
)
from fairdarts.data.loaders import InfiniteBatches, InMemoryLoader, TorchLoader, derive_seed, make_dataloader

__all__ = [
    "DATASET_CHOICES", "DATASETS", "KNOWN_NAMES", "BatchAugment", "DatasetInfo", "InMemoryImages", "InMemoryLoader",
    "InfiniteBatches", "TorchLoader", "derive_seed", "load_dataset", "load_image_folder", "make_dataloader", "make_synthetic",
    "normalize", "read_idx", "resize_images", "split_train_portion",
]
