"""Image-classification datasets, read from their real on-disk formats.

Everything small (CIFAR-10/100, SVHN, MNIST, Fashion-MNIST, synthetic) becomes one
:class:`InMemoryImages`: a uint8 tensor ``[N, C, H, W]`` that a loader moves to the GPU once and
augments there in batches, so the CPU never decodes or transforms images one by one.
ImageNet and any other ``ImageFolder`` tree stay on disk behind a ``torch.utils.data.Dataset``
with the DARTS transforms.

The layouts are torchvision's, so ``--download`` (torchvision's downloader) and files fetched by
hand end up in the same place::

    ROOT/cifar-10-batches-py/data_batch_1..5, test_batch
    ROOT/cifar-100-python/train, test
    ROOT/train_32x32.mat, test_32x32.mat                               (SVHN)
    ROOT/[MNIST/raw/ | FashionMNIST/raw/]train-images-idx3-ubyte[.gz]  (and the other three)
    ROOT/train/<class>/*.JPEG, ROOT/val/<class>/*.JPEG                 (imagenet, folder)

A corrupt file is one line naming it (a damaged gzip stream, a truncated idx file, a foreign
pickle), except a corrupt image in a folder tree: it is skipped with one warning naming it
(:class:`SkippedImage`), since one bad JPEG among a million should not cost a run its epoch.
"""
from __future__ import annotations

import codecs
import dataclasses
import gzip
import io
import logging
import math
import os
import pickle
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fairdarts.errors import UserError, one_line
from fairdarts.safe_io import check_path_length

if TYPE_CHECKING:
    from PIL import Image

Split = Literal["train", "test"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetInfo:
    """What a network and a normaliser need to know about a dataset."""
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = ()  # class names for per-class reports; empty when unknown


_DIGITS = tuple(str(d) for d in range(10))
DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo("cifar10", 10, 3, 32, (0.49139968, 0.48215827, 0.44653124),
                           (0.24703233, 0.24348505, 0.26158768),
                           ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
    "cifar100": DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _DIGITS),
    # 28 px images padded to 32 px, so that the CIFAR network and its auxiliary head fit unchanged
    "mnist": DatasetInfo("mnist", 10, 1, 32, (0.1307,), (0.3081,), _DIGITS),
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 32, (0.2860,), (0.3530,),
                                 ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                  "Sneaker", "Bag", "Ankle boot")),
    "imagenet": DatasetInfo("imagenet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD),
    "synthetic": DatasetInfo("synthetic", 10, 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
DATASETS["fashionmnist"] = DATASETS["fashion_mnist"]
KNOWN_NAMES = tuple(DATASETS) + ("folder",)
#: What ``--dataset`` accepts (the retraining and evaluation; a search takes all but ImageNet).
DATASET_CHOICES = ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "imagenet", "folder", "synthetic")


@dataclass
class InMemoryImages:
    """A whole dataset as two tensors: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""
    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | torch.Tensor) -> InMemoryImages:
        index = torch.as_tensor(indices, dtype=torch.long)
        return InMemoryImages(self.images[index], self.labels[index], self.info)


class MissingFiles(Exception):
    """A dataset's files are not where torchvision puts them; the message names them."""


# ----- CIFAR: pickled dicts of numpy arrays ---------------------------------------------------
def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of Python 3 use it for bytes, and nothing else."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed_globals() -> dict[tuple[str, str], object]:
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
    allowed: dict[tuple[str, str], object] = {
        ("builtins", "dict"): dict, ("builtins", "list"): list, ("builtins", "str"): str,
        ("builtins", "bytes"): bytes, ("builtins", "int"): int, ("_codecs", "encode"): _latin1,
        ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
    }
    for module in ("numpy.core", "numpy._core"):  # files pickled under numpy 1 or numpy 2
        allowed[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer  # protocol 5
    return allowed


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can run any callable it names,
    so a tampered dataset file must not be able to name anything else."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}") from None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            blob = _DataOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise UserError(f"{path}: not a plain CIFAR pickle ({one_line(exc)}); "
                        "delete it and download it again") from None
    if not isinstance(blob, dict):
        raise UserError(f"{path}: expected a pickled dict, found {type(blob).__name__}; "
                        "delete it and download it again")
    return blob


def split_files(name: str, root: Path, split: Split) -> list[Path]:
    """The files of ``split`` of the in-memory dataset ``name`` under ``root`` (torchvision's
    layouts, see the module doc); :class:`MissingFiles`, naming what is expected, when one is
    absent. The readers and ``fairdarts.doctor`` look in these same places."""
    if name in ("cifar10", "cifar100"):
        folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
        names = ([f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]) \
            if name == "cifar10" else [split]
        paths = [folder / n for n in names]
        if not all(p.is_file() for p in paths):
            raise MissingFiles(f"expected {folder}/{'data_batch_1..5' if len(names) == 5 else names[0]}")
        return paths
    if name == "svhn":
        path = root / f"{split}_32x32.mat"
        if not path.is_file():
            raise MissingFiles(f"expected {path}")
        return [path]
    dirs = [root, root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"]
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    found = [_find(dirs, s) for s in stems]
    if None in found:
        raise MissingFiles(f"expected {stems[0]}[.gz] and {stems[1]}[.gz] in {root} or {dirs[1]}")
    return found  # type: ignore[return-value]


def _integer_labels(targets: object) -> np.ndarray | None:
    """``targets`` as int64 when it is a flat list or array of integers that fit; else None (floats
    such as 1e30, bytes, nested or mixed lists are not labels)."""
    if not isinstance(targets, (list, np.ndarray)):
        return None
    try:
        array = np.asarray(targets)
    except (ValueError, TypeError, OverflowError):
        return None
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu") \
            or (array.size and (array.min() < np.iinfo(np.int64).min or array.max() > np.iinfo(np.int64).max)):
        return None
    return array.astype(np.int64)


def _read_cifar(root: Path, split: Split, info: DatasetInfo) -> InMemoryImages:
    paths = split_files(info.name, root, split)
    label_key = b"labels" if info.name == "cifar10" else b"fine_labels"
    folder = paths[0].parent
    images, labels = [], []
    for path in paths:
        batch = _unpickle(path)
        data, targets = batch.get(b"data"), _integer_labels(batch.get(label_key))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 \
                or targets is None or len(targets) != len(data):
            raise UserError(f"{path}: not a {info.name} batch (no uint8 b'data' [N, 3072] with as many integer "
                            f"{label_key!r}); delete it and download it again")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(targets))
    if info.name == "cifar100" and (folder / "meta").is_file():
        names_ = _unpickle(folder / "meta").get(b"fine_label_names")
        if isinstance(names_, list) and len(names_) == info.num_classes:
            classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names_)
            info = dataclasses.replace(info, classes=classes)
    return InMemoryImages(torch.cat(images), torch.cat(labels), info)


# ----- SVHN: MATLAB files --------------------------------------------------------------------
def _read_svhn(root: Path, split: Split, info: DatasetInfo) -> InMemoryImages:
    path, = split_files("svhn", root, split)
    try:
        import scipy.io
    except ImportError:
        raise UserError("reading SVHN's .mat files needs scipy: pip install scipy") from None
    try:
        mat = scipy.io.loadmat(str(path))
        x, y = mat["X"], mat["y"]
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not an SVHN .mat file with 'X' and 'y' ({one_line(exc)}); "
                        "download it again") from None
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8))
    labels = torch.from_numpy(y.reshape(-1).astype(np.int64) % 10)  # SVHN writes the digit 0 as class 10
    return InMemoryImages(images, labels, info)


# ----- MNIST, Fashion-MNIST: idx files -------------------------------------------------------
#: Larger than any idx dataset (MNIST's training images are 45 MiB), small enough for memory.
MAX_IDX_BYTES = 1 << 30


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx file (gzip or plain) of unsigned bytes: big-endian ``magic`` (2051 images,
    2049 labels), whose last byte is the number of dimensions, then one 4-byte size each."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_IDX_BYTES + 1)
        if raw[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
                raw = stream.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: unreadable, the file is corrupt ({one_line(exc)}); download it again") from None
    if len(raw) > MAX_IDX_BYTES:
        raise UserError(f"{path}: more than {MAX_IDX_BYTES >> 20} MiB of data, larger than any idx dataset; is this "
                        "the right file?")
    if len(raw) < 4:
        raise UserError(f"{path}: {len(raw)} bytes, too short for an idx file; download it again")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise UserError(f"{path}: idx magic number {found}, expected {magic}; is this the right file?")
    ndim = magic & 0xFF
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(raw) - offset != math.prod(dims):
        raise UserError(f"{path}: {len(raw) - offset} bytes of data for a {dims} array; "
                        "the file is truncated, download it again")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


def _find(dirs: Sequence[Path], stem: str) -> Path | None:
    return next((d / n for d in dirs for n in (stem, stem + ".gz") if (d / n).is_file()), None)


def _read_mnist(root: Path, split: Split, info: DatasetInfo) -> InMemoryImages:
    paths = split_files(info.name, root, split)
    images, labels = read_idx(paths[0], 2051), read_idx(paths[1], 2049)
    if len(images) != len(labels):
        raise UserError(f"{paths[0]} holds {len(images)} images but {paths[1]} {len(labels)} labels; "
                        "download them again")
    padded = F.pad(torch.from_numpy(images.copy()).unsqueeze(1), (2, 2, 2, 2))  # 28 -> 32 px, zeros
    return InMemoryImages(padded, torch.from_numpy(labels.astype(np.int64)), info)


_READERS: dict[str, Callable[[Path, Split, DatasetInfo], InMemoryImages]] = {
    "cifar10": _read_cifar, "cifar100": _read_cifar, "svhn": _read_svhn,
    "mnist": _read_mnist, "fashion_mnist": _read_mnist,
}


def _download(name: str, root: Path, split: Split) -> Exception | None:
    """torchvision's downloader into ``root``; the exception it raised, if any (offline, say)."""
    import torchvision.datasets as tvd

    make = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}
    try:
        if name == "svhn":
            tvd.SVHN(str(root), split=split, download=True)
        else:
            make[name](str(root), train=split == "train", download=True)
    except Exception as exc:  # noqa: BLE001  network, checksum, disk: all reported to the user as one line
        return exc
    return None


# ----- synthetic -----------------------------------------------------------------------------
def make_synthetic(num_images: int, image_size: int = 32, num_classes: int = 10, seed: int = 0) -> InMemoryImages:
    """Noisy images whose class is their colour: each class has its own mean RGB (base-k digits
    of the class over k evenly spaced levels), so a network learns it in a few steps and a
    broken training loop shows. Deterministic in ``seed``; the class colours do not depend on it.
    Mean and std in ``info`` are those of the distribution, the same for every split and seed."""
    k = max(2, math.ceil(num_classes ** (1 / 3) - 1e-9))
    levels = torch.linspace(40, 215, k)
    digits = torch.stack([(torch.arange(num_classes) // k ** i) % k for i in range(3)], dim=1)
    colours = levels[digits]  # [num_classes, 3]
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_images,), generator=g)
    noise = torch.randint(-40, 41, (num_images, 3, image_size, image_size), generator=g)
    images = (colours[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    noise_var = (81 ** 2 - 1) / 12  # of the discrete uniform noise on -40..40
    mean, std = colours.mean(0) / 255, (colours.var(0, unbiased=False) + noise_var).sqrt() / 255
    info = dataclasses.replace(DATASETS["synthetic"], num_classes=num_classes, image_size=image_size,
                               mean=tuple(mean.tolist()), std=tuple(std.tolist()))
    return InMemoryImages(images, labels, info)


def resize_images(data: InMemoryImages, image_size: int, chunk: int = 4096) -> InMemoryImages:
    """``data`` with square images of ``image_size`` px (antialiased bilinear), resized once here
    instead of in every batch."""
    if data.images.shape[-1] == image_size and data.images.shape[-2] == image_size:
        return data
    out = torch.cat([F.interpolate(part.float(), size=(image_size, image_size), mode="bilinear",
                                   antialias=True, align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
                     for part in data.images.split(chunk)])
    return InMemoryImages(out, data.labels, dataclasses.replace(data.info, image_size=image_size))


# ----- ImageNet and ImageFolder trees ---------------------------------------------------------
@dataclass(frozen=True)
class SkippedImage:
    """What :class:`TolerantImageFolder` gives for an image it cannot read: the loaders leave it
    out of its batch and log one warning naming the file."""
    path: str
    reason: str


#: Pixels of the largest image a folder dataset decodes (8192 x 8192); a larger one, or a
#: decompression bomb that PIL refuses, is an unreadable image: skipped and counted.
MAX_IMAGE_PIXELS = 1 << 26


def read_image(path: str) -> "Image.Image":
    """The RGB image at ``path``, read only from a regular file (opened without blocking, so a FIFO
    named ``x.png`` is refused, not waited on) of at most :data:`MAX_IMAGE_PIXELS` pixels, checked
    in the header before anything is decoded. Raises ValueError or OSError, which
    :class:`TolerantImageFolder` turns into a skipped image."""
    import warnings

    from PIL import Image

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(f)
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ValueError(f"{width} x {height} pixels, more than the {MAX_IMAGE_PIXELS} an image may have")
                return image.convert("RGB")
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ValueError(f"refused as a decompression bomb ({one_line(exc)[:120]})") from None


def _walk_images(directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...]) -> list[tuple[str, int]]:
    """(path, class) of the image files under each class folder, in torchvision's order (class,
    folder, file name): regular files only (a pipe or device named like an image would block or
    never end), every real folder entered once (a link back to a parent, or to a folder already
    read, is skipped with one warning)."""
    root = os.stat(directory)
    seen: set[tuple[int, int]] = {(root.st_dev, root.st_ino)}
    skipped_links: list[str] = []
    samples: list[tuple[str, int]] = []
    for name in sorted(class_to_idx):
        found: list[tuple[str, str]] = []
        pending = [os.path.join(directory, name)]
        while pending:
            folder = pending.pop()
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                skipped_links.append(folder)
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as entries:
                names = sorted(entry.name for entry in entries)
            subfolders = []
            for file in names:
                try:
                    mode = os.stat(os.path.join(folder, file)).st_mode
                except OSError:
                    continue  # a dangling link
                if stat.S_ISDIR(mode):
                    subfolders.append(os.path.join(folder, file))
                elif stat.S_ISREG(mode) and file.lower().endswith(extensions):
                    found.append((folder, file))
            pending += reversed(subfolders)  # entered in name order: the same link is skipped every time
        if not found:
            raise FileNotFoundError(f"no image file in the class folder {name} (or it leads to a folder already read).")
        samples += [(os.path.join(folder, file), class_to_idx[name]) for folder, file in sorted(found)]
    if skipped_links:
        logging.getLogger("fairdarts").warning(
            "%d folder link(s) under %s lead to a folder already read (e.g. %s): skipped, each folder is read once",
            len(skipped_links), directory, skipped_links[0])
    return samples


def _tolerant_folder_class():
    """The class, made on first use (torchvision is imported only when a folder is read) and
    kept as a module attribute, so that it pickles for DataLoader workers by name."""
    made = globals().get("TolerantImageFolder")
    if made is not None:
        return made
    from torchvision import datasets

    class TolerantImageFolder(datasets.ImageFolder):
        """An ``ImageFolder`` where a corrupt or unreadable image is skipped, not fatal, whose walk
        (:func:`_walk_images`) and reads (:func:`read_image`) touch regular files only.

        One bad JPEG among a million would otherwise kill the run mid-epoch (in a DataLoader
        worker, with a traceback). The item becomes a :class:`SkippedImage`; the batch goes on
        without it and the run logs ``skipping unreadable image PATH: reason`` once per file;
        the loader counts them and stops a run where too many are unreadable.
        """

        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            return _walk_images(str(directory), class_to_idx, tuple(extensions or ()))

        def __getitem__(self, index: int):  # type: ignore[override]
            path = self.samples[index][0]
            try:
                return super().__getitem__(index)
            except (OSError, ValueError, SyntaxError, MemoryError) as exc:  # PIL: UnidentifiedImageError, ...
                return SkippedImage(str(path), one_line(exc)[:200] or type(exc).__name__)

    TolerantImageFolder.__module__ = __name__
    globals()["TolerantImageFolder"] = TolerantImageFolder
    return TolerantImageFolder


_FOLDER_SPLITS: dict[str, tuple[str, ...]] = {"train": ("train",), "test": ("val", "test")}


def folder_split(root: Path, split: Split) -> Path | None:
    """The folder of ``split`` in an ImageFolder tree (``root/train``; ``root/val``, else
    ``root/test``), or None; ImageNet and ``folder`` datasets are read from there."""
    return next((root / c for c in _FOLDER_SPLITS[split] if (root / c).is_dir()), None)


def load_image_folder(name: str, root: str | Path, split: Split,
                      image_size: int | None = None) -> torch.utils.data.Dataset:
    """``root/train`` or ``root/val`` (else ``root/test``) as an ``ImageFolder`` with the DARTS
    ImageNet transforms; the dataset gets an ``info`` attribute like :class:`InMemoryImages`."""
    from torchvision import transforms

    TolerantImageFolder = _tolerant_folder_class()
    root = Path(root).expanduser()
    folder = folder_split(root, split)
    if folder is None:
        wanted = " or ".join(str(root / c) for c in _FOLDER_SPLITS[split])
        raise UserError(f"{name} {split} images not found: expected {wanted} with one sub-folder of images per "
                        f"class (ImageFolder layout); point --data at the folder that holds train/ and val/")
    size = image_size or DATASETS["imagenet"].image_size
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if split == "train":
        transform = transforms.Compose([
            transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
            transforms.ToTensor(), normalize])
    else:
        transform = transforms.Compose([transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size),
                                        transforms.ToTensor(), normalize])
    from torchvision.datasets.folder import IMG_EXTENSIONS

    try:
        dataset = TolerantImageFolder(str(folder), transform=transform, loader=read_image)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise UserError(f"{folder} holds no images: {one_line(exc)} "
                        "Put one sub-folder of images per class in it") from None
    except OSError as exc:
        raise UserError(f"cannot read the image folder {folder}: {exc.strerror or one_line(exc)}") from None
    if not dataset.samples:
        raise UserError(f"{folder} holds no image files ({', '.join(IMG_EXTENSIONS)}) in its class folders")
    dataset.info = DatasetInfo(name, len(dataset.classes), 3, size, IMAGENET_MEAN, IMAGENET_STD, tuple(dataset.classes))
    return dataset


# ----- entry point ----------------------------------------------------------------------------
def load_dataset(name: str, root: str, split: Split, download: bool = False, image_size: int | None = None,
                 synthetic_size: int = 512) -> InMemoryImages | torch.utils.data.Dataset:
    """The ``split`` of dataset ``name`` under ``root``: an :class:`InMemoryImages` for everything
    that fits in memory, an ``ImageFolder`` for ``imagenet`` / ``folder``. ``image_size`` resizes
    (default: the dataset's own); ``synthetic_size`` is the number of synthetic images."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name.lower() not in KNOWN_NAMES:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(KNOWN_NAMES)}")
    check_path_length(root, "--data")
    if name.lower() in ("imagenet", "folder"):
        try:
            folder = load_image_folder(name.lower(), root, split, image_size)
        except UserError as exc:
            if download:
                raise UserError(f"{exc} ({name} cannot be downloaded automatically)") from None
            raise
        check_classes(folder, split, f"{name.lower()} under {root}")
        return folder
    info = DATASETS[name.lower()]
    if info.name == "synthetic":
        return make_synthetic(synthetic_size, image_size or info.image_size, info.num_classes,
                              seed=0 if split == "train" else 1)
    path = Path(root).expanduser()
    read = _READERS[info.name]
    try:
        data = read(path, split, info)
    except MissingFiles as missing:
        if not download:
            raise UserError(f"{info.name} {split} data not found: {missing} (torchvision's layout); "
                            f"put the files there or pass --download") from None
        failure = _download(info.name, path, split)
        try:
            data = read(path, split, info)
        except MissingFiles:
            raise UserError(f"downloading {info.name} into {path} failed ({one_line(failure)}); fetch it "
                            f"elsewhere and put the files there: {missing}") from None
    if len(data) == 0:
        raise UserError(f"{info.name} {split} data under {path} holds no images; download it again")
    if int(data.labels.min()) < 0 or int(data.labels.max()) >= info.num_classes:
        raise UserError(f"{info.name} {split} labels under {path} fall outside 0..{info.num_classes - 1}; "
                        f"is --dataset right for these files?")
    check_classes(data, split, f"{info.name} under {path}")
    return resize_images(data, image_size) if image_size else data


def _labels(data: InMemoryImages | torch.utils.data.Dataset) -> torch.Tensor:
    """The labels of an in-memory dataset, an ImageFolder or a ``Subset`` of one, without reading images."""
    if isinstance(data, torch.utils.data.Subset):
        return _labels(data.dataset)[torch.as_tensor(list(data.indices), dtype=torch.long)]
    return data.labels if isinstance(data, InMemoryImages) else torch.as_tensor(data.targets)


def check_classes(data: InMemoryImages | torch.utils.data.Dataset, split: Split, where: str) -> None:
    """At least two classes: a network trained on one learns nothing and scores 100%, so a
    training set of one is an error; a test set of one (a per-class check) is worth a warning."""
    found = int(torch.unique(_labels(data)).numel())
    if found >= 2:
        return
    message = f"the {split} set ({where}) holds images of {found} class{'' if found == 1 else 'es'} only"
    if split == "train":
        raise UserError(f"{message}; a classifier needs at least two (one sub-folder per class for a folder tree)")
    logging.getLogger("fairdarts").warning("warning: %s; its accuracy says nothing about the others", message)


def image_size_of(name: str, image_size: int | None) -> int:
    """The side of the images a run of dataset ``name`` sees: ``image_size`` when given, else the
    dataset's own (an ImageFolder tree is read at ImageNet's)."""
    return image_size or DATASETS.get(name.lower(), DATASETS["imagenet"]).image_size


def split_train_portion(n: int, portion: float) -> tuple[list[int], list[int]]:
    """DARTS' split of the training set: the first ``floor(portion * n)`` images train the
    weights, the rest the architecture, in file order (the official code does not shuffle)."""
    if not 0.0 < portion < 1.0:
        raise UserError(f"--train_portion must lie strictly between 0 and 1, got {portion}")
    cut = int(math.floor(portion * n))
    return list(range(cut)), list(range(cut, n))


def load_first(name: str, root: str, split: Split, n: int | None, download: bool = False,
               image_size: int | None = None,
               resize_after_cut: bool = False) -> InMemoryImages | torch.utils.data.Dataset:
    """The first ``n`` images of a split (all of them for ``None``), at ``image_size``.

    ``resize_after_cut``: in-memory datasets are read at their own size, cut to ``n``, then
    resized, so that a CPU smoke run does not resize 50k images (the search's order; synthetic
    images are then drawn at 32 pixels). Otherwise :func:`load_dataset` resizes while reading
    (the retraining's order; synthetic images are drawn at ``image_size``). Both orders stay:
    each is what earlier runs of its command computed on.
    """
    on_disk = name.lower() in ("imagenet", "folder")
    later = resize_after_cut and not on_disk
    data = load_dataset(name, root, split, download=download, image_size=None if later else image_size)
    if n is not None and n < len(data):
        data = (data.subset(list(range(n))) if isinstance(data, InMemoryImages)
                else torch.utils.data.Subset(data, range(n)))
        check_classes(data, split, f"the first {n} images of {name}")
    if later and image_size:
        data = resize_images(data, image_size)
    return data


def dataset_info(data: InMemoryImages | torch.utils.data.Dataset) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset that :func:`load_first` returned (a cut ImageFolder
    is a ``Subset``, whose ``dataset`` carries it)."""
    return data.info if hasattr(data, "info") else data.dataset.info
