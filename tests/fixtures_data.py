"""Writers of tiny datasets in the exact on-disk formats that fairdarts.data reads."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def cifar_batch(n: int, seed: int, label_key: bytes = b"labels", num_classes: int = 10) -> dict:
    """A batch dict as in the CIFAR python files: bytes keys, uint8 ``data`` [N, 3072] (R, G, B
    planes of 32x32, row-major), a list of int labels, bytes file names."""
    rng = np.random.default_rng(seed)
    batch = {b"batch_label": f"batch {seed}".encode(), label_key: rng.integers(0, num_classes, n).tolist(),
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)]}
    if label_key == b"fine_labels":
        batch[b"coarse_labels"] = [c // 5 for c in batch[label_key]]
    return batch


def write_cifar10(root: Path, per_batch: int = 2, protocol: int = 2) -> dict[str, dict]:
    """``root/cifar-10-batches-py`` with data_batch_1..5, test_batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": cifar_batch(per_batch, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(per_batch + 1, 99)
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": per_batch,
            b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


def write_cifar100(root: Path, protocol: int = 2) -> dict[str, dict]:
    """``root/cifar-100-python`` with train, test and meta."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    batches = {"train": cifar_batch(6, 1, b"fine_labels", 100), "test": cifar_batch(3, 2, b"fine_labels", 100)}
    for name, batch in batches.items():
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: magic 0x0000 08 <ndim> (unsigned bytes), big-endian sizes, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, n_train: int, n_test: int, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST-style idx files in ``folder`` (gzip or plain)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, array in arrays.items():
        raw = idx_bytes(array)
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


def write_image_folder(root: Path, splits: tuple[str, ...] = ("train", "val"),
                       classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 2) -> None:
    """``root/<split>/<class>/<i>.png``: small RGB PNGs of different sizes."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
