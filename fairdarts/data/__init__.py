"""Datasets in their real on-disk formats, batched augmentation on the device, resumable loaders."""
from fairdarts.data.augment import BatchAugment, Fitted, fit_to_image, normalize
from fairdarts.data.datasets import (
    DATASET_CHOICES, DATASETS, KNOWN_NAMES, DatasetInfo, MissingFiles, dataset_info, folder_split, image_size_of,
    InMemoryImages, load_dataset, load_first, load_image_folder, make_synthetic, read_idx, resize_images, split_files,
    split_train_portion,
)
from fairdarts.data.loaders import (
    InfiniteBatches, InMemoryLoader, TorchLoader, derive_seed, make_dataloader, make_loader,
)

__all__ = [
    "DATASET_CHOICES", "DATASETS", "KNOWN_NAMES", "BatchAugment", "DatasetInfo", "Fitted", "InMemoryImages",
    "InMemoryLoader", "InfiniteBatches", "MissingFiles", "TorchLoader", "dataset_info", "derive_seed", "fit_to_image",
    "folder_split", "image_size_of", "load_dataset", "load_first", "load_image_folder", "make_dataloader",
    "make_loader", "make_synthetic", "normalize", "read_idx", "resize_images", "split_files", "split_train_portion",
]
