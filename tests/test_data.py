"""fairdarts.data: real on-disk formats (written here byte for byte), refusal of pickled code,
the DARTS split, batched augmentation on the device, and loaders that resume at any batch."""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from fairdarts.data import (
    DATASETS, BatchAugment, InfiniteBatches, InMemoryImages, InMemoryLoader, fit_to_image, load_dataset,
    make_dataloader, make_synthetic, normalize, split_train_portion,
)
from fairdarts.errors import UserError
from fixtures_data import idx_bytes, write_cifar10, write_cifar100, write_idx_set, write_image_folder

FASHION = Path("/usr/share/datasets/fashion-mnist")
HAS_SCIPY = importlib.util.find_spec("scipy") is not None


def one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# ----- CIFAR -----------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [2, 4, 5])  # 2: as the real (Python 2) files; 5: numpy's _frombuffer path
def test_cifar10_reads_the_python_batches(tmp_path, protocol):
    batches = write_cifar10(tmp_path, per_batch=2, protocol=protocol)
    train = load_dataset("cifar10", str(tmp_path), "train")
    test = load_dataset("cifar10", str(tmp_path), "test")
    assert isinstance(train, InMemoryImages) and train.info == DATASETS["cifar10"]
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8 and len(test) == 3
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    assert torch.equal(train.images, torch.from_numpy(expected))  # batches in order, planes R, G, B
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert test.labels.dtype == torch.int64 and test.labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar100_reads_fine_labels_and_class_names(tmp_path):
    batches = write_cifar100(tmp_path)
    train = load_dataset("cifar100", str(tmp_path), "train")
    assert train.images.shape == (6, 3, 32, 32) and train.info.num_classes == 100
    assert train.labels.tolist() == batches["train"][b"fine_labels"]
    assert train.info.classes[:2] == ("fine0", "fine1")
    assert len(load_dataset("cifar100", str(tmp_path), "test")) == 3


def test_pickled_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    write_cifar10(tmp_path)
    batch = pickle.loads(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}))
    batch[b"filenames"] = [Exploit()]
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError, match=r"refusing to unpickle (posix|os|nt)\.system") as excinfo:
        load_dataset("cifar10", str(tmp_path), "test")
    assert "test_batch" in one_line_error(excinfo)
    assert not marker.exists()


def test_not_a_cifar_batch(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": [1, 2]}))
    with pytest.raises(UserError, match="not a cifar10 batch"):
        load_dataset("cifar10", str(tmp_path), "test")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a plain CIFAR pickle"):
        load_dataset("cifar10", str(tmp_path), "test")


# ----- idx files: MNIST, Fashion-MNIST ---------------------------------------------------------
@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_in_torchvision_raw_folder_and_padding(tmp_path, gz):
    arrays = write_idx_set(tmp_path / "MNIST" / "raw", n_train=5, n_test=3, gz=gz)
    train = load_dataset("mnist", str(tmp_path), "train")
    assert train.images.shape == (5, 1, 32, 32) and train.info.in_channels == 1
    assert torch.equal(train.images[:, 0, 2:30, 2:30], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    border = train.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0  # padded with zeros, 2 px each side
    assert train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert len(load_dataset("mnist", str(tmp_path), "test")) == 3


def test_fashion_idx_files_directly_in_root_and_alias(tmp_path):
    write_idx_set(tmp_path, n_train=4, n_test=2, gz=True, seed=1)
    data = load_dataset("fashionmnist", str(tmp_path), "test", image_size=16)
    assert data.images.shape == (2, 1, 16, 16) and data.info.name == "fashion_mnist" and data.info.image_size == 16


def test_bad_idx_files(tmp_path):
    arrays = write_idx_set(tmp_path, n_train=4, n_test=2, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(arrays["train-images-idx3-ubyte"]))
    with pytest.raises(UserError, match="magic number 2051, expected 2049"):
        load_dataset("mnist", str(tmp_path), "train")
    raw = idx_bytes(arrays["t10k-images-idx3-ubyte"])
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:-10])
    with pytest.raises(UserError, match="truncated"):
        load_dataset("mnist", str(tmp_path), "test")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw)[:-20])
    with pytest.raises(UserError, match="unreadable"):
        load_dataset("mnist", str(tmp_path), "test")


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"the real Fashion-MNIST files are not installed at {FASHION}")
def test_real_fashion_mnist():
    train = load_dataset("fashion_mnist", str(FASHION), "train")
    test = load_dataset("fashion_mnist", str(FASHION), "test")
    assert train.images.shape == (60000, 1, 32, 32) and test.images.shape == (10000, 1, 32, 32)
    assert train.labels.unique().tolist() == list(range(10)) and train.info.num_classes == 10
    assert train.labels.bincount().tolist() == [6000] * 10
    assert train.images[:, :, :2].sum() == 0 and train.images.float().mean() > 50  # padding, real pixels


# ----- SVHN ------------------------------------------------------------------------------------
@pytest.mark.skipif(HAS_SCIPY, reason="scipy is installed, so the missing-scipy message cannot show")
def test_svhn_without_scipy_says_how_to_install_it(tmp_path):
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    with pytest.raises(UserError, match="pip install scipy"):
        load_dataset("svhn", str(tmp_path), "test")


@pytest.mark.skipif(not HAS_SCIPY, reason="scipy is not installed (needed to write and read SVHN .mat files)")
def test_svhn_mat_file(tmp_path):
    import scipy.io

    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 4), dtype=np.uint8)
    scipy.io.savemat(str(tmp_path / "train_32x32.mat"), {"X": x, "y": np.array([[10], [1], [2], [10]], np.uint8)})
    data = load_dataset("svhn", str(tmp_path), "train")
    assert data.labels.tolist() == [0, 1, 2, 0]  # SVHN's class 10 is the digit 0
    assert torch.equal(data.images[1], torch.from_numpy(x[:, :, :, 1].transpose(2, 0, 1).copy()))


# ----- ImageFolder trees -----------------------------------------------------------------------
def test_image_folder_tree_and_its_dataloader(tmp_path):
    write_image_folder(tmp_path)
    train = load_dataset("folder", str(tmp_path), "train", image_size=16)
    val = load_dataset("folder", str(tmp_path), "test", image_size=16)
    assert train.info.num_classes == 2 and train.info.classes == ("cat", "dog") and train.info.image_size == 16
    x, y = train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0
    loader = make_dataloader(val, batch_size=3, shuffle=False, workers=0, seed=0, device="cpu")
    batches = list(loader)
    assert len(loader) == 2 and [b[0].shape for b in batches] == [(3, 3, 16, 16), (1, 3, 16, 16)]
    assert torch.equal(batches[0][0], list(loader)[0][0])  # centre crop: no randomness


def test_image_folder_test_dir_fallback_and_empty_folder(tmp_path):
    write_image_folder(tmp_path, splits=("train", "test"))
    assert len(load_dataset("imagenet", str(tmp_path), "test")) == 4
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no images") as excinfo:
        load_dataset("folder", str(tmp_path / "empty"), "train")
    one_line_error(excinfo)


# ----- user mistakes ---------------------------------------------------------------------------
def test_missing_data_names_the_files_and_the_flag(tmp_path):
    with pytest.raises(UserError, match="--download") as excinfo:
        load_dataset("cifar10", str(tmp_path), "train")
    assert str(tmp_path / "cifar-10-batches-py") in one_line_error(excinfo)
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_dataset("fashion_mnist", str(tmp_path), "train")
    with pytest.raises(UserError, match="train/ and val/"):
        load_dataset("imagenet", str(tmp_path / "nowhere"), "train")


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown dataset 'cifar11'") as excinfo:
        load_dataset("cifar11", "data", "train")
    assert all(name in one_line_error(excinfo) for name in ("cifar10", "svhn", "fashion_mnist", "folder"))


def test_failed_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(UserError, match="downloading cifar10 into .* failed .*name resolution") as excinfo:
        load_dataset("cifar10", str(tmp_path), "train", download=True)
    assert "data_batch_1..5" in one_line_error(excinfo)


def test_split_train_portion_is_the_unshuffled_darts_split():
    assert split_train_portion(10, 0.5) == (list(range(5)), list(range(5, 10)))
    assert split_train_portion(7, 0.5) == ([0, 1, 2], [3, 4, 5, 6])
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(UserError, match="train_portion"):
            split_train_portion(10, bad)


def test_synthetic_is_deterministic_and_learnable():
    a = make_synthetic(200, 8, seed=3)
    b = load_dataset("synthetic", "unused", "train", image_size=8, synthetic_size=200)
    assert torch.equal(a.images, make_synthetic(200, 8, seed=3).images) and not torch.equal(a.images, b.images)
    assert a.images.shape == (200, 3, 8, 8) and a.info.image_size == 8 and a.info == b.info
    colours = torch.stack([a.images[a.labels == c].float().mean((0, 2, 3)) for c in range(10)])
    predicted = torch.cdist(b.images.float().mean((2, 3)), colours).argmin(1)
    assert (predicted == b.labels).float().mean() > 0.95  # the class is in the image


# ----- augmentation ----------------------------------------------------------------------------
MEAN, STD = DATASETS["cifar10"].mean, DATASETS["cifar10"].std


def _images(n: int = 6, size: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_normalize_is_totensor_then_normalize():
    x = _images()
    mean, std = torch.tensor(MEAN).double().view(1, 3, 1, 1), torch.tensor(STD).double().view(1, 3, 1, 1)
    expected = (x.double() / 255 - mean) / std
    torch.testing.assert_close(normalize(x, MEAN, STD), expected.float())
    plain = BatchAugment(MEAN, STD, crop_padding=0, flip=False)
    assert torch.equal(plain(x, torch.Generator()), normalize(x, MEAN, STD))


def test_augment_is_a_function_of_the_generator_state():
    x, aug = _images(), BatchAugment(MEAN, STD, cutout_length=4)
    out = aug(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.equal(out, aug(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, aug(x, torch.Generator().manual_seed(2)))


def test_flip_really_flips():
    x = _images(n=32)
    out = BatchAugment(MEAN, STD, crop_padding=0, flip=True)(x, torch.Generator().manual_seed(0))
    plain, mirrored = normalize(x, MEAN, STD), normalize(x.flip(-1), MEAN, STD)
    same = [torch.equal(o, p) for o, p in zip(out, plain)]
    flipped = [torch.equal(o, m) for o, m in zip(out, mirrored)]
    assert all(s != f for s, f in zip(same, flipped)) and 0 < sum(flipped) < 32


def test_crop_is_a_shifted_copy_with_zero_padding():
    x, p = _images(n=16, size=10), 3
    out = BatchAugment((0.0,) * 3, (1 / 255,) * 3, crop_padding=p, flip=False)(x, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (p, p, p, p)).float()
    offsets = set()
    for o, img in zip(out, padded):
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.allclose(o, img[:, dy:dy + 10, dx:dx + 10], atol=1e-3)]
        assert len(found) == 1
        offsets.add(found[0])
    assert len(offsets) > 4  # per-image offsets


def test_cutout_zeroes_one_square_after_normalising():
    x = torch.full((64, 3, 16, 16), 255, dtype=torch.uint8)
    out = BatchAugment(MEAN, STD, crop_padding=0, flip=False, cutout_length=6)(x, torch.Generator().manual_seed(0))
    zero = out == 0
    assert torch.equal(out[~zero], normalize(x, MEAN, STD)[~zero])  # zeroed after Normalize, the rest intact
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # all channels together
    sizes = set()
    for z in zero[:, 0]:
        rows, cols = z.any(1).nonzero().flatten(), z.any(0).nonzero().flatten()
        assert len(rows) <= 6 and len(cols) <= 6 and z.sum() == len(rows) * len(cols)  # a rectangle
        if len(rows):
            assert (rows.diff() == 1).all() and (cols.diff() == 1).all()
        sizes.add((len(rows), len(cols)))
    assert (6, 6) in sizes and any(s != (6, 6) for s in sizes)  # whole squares, and squares clipped at borders


@pytest.mark.parametrize("size, given, length, said", [
    (32, None, 16, "cutout 16 px: half the 32 px images"),        # DARTS' CIFAR setting, unchanged
    (16, None, 8, "cutout 8 px: half the 16 px images"),          # scaled, not 16 px on 16 px
    (16, 16, 16, "warning: --cutout_length 16 is as large as the 16 px images"),
    (32, 16, 16, None),                                           # as given, nothing to say
    (16, 0, 0, None),                                             # cutout off
])
def test_cutout_is_fitted_to_the_image_size(size, given, length, said):
    fitted = fit_to_image(size, given)
    assert fitted.cutout_length == length and fitted.crop_padding == 4
    assert [n for n in fitted.notes if "cutout" in n] == ([] if said is None else [fitted.notes[0]])
    assert said is None or fitted.notes[0].startswith(said)


def test_crop_padding_stays_and_is_warned_about_on_tiny_images():
    assert fit_to_image(16, 0).notes == ()
    assert fit_to_image(8, 0).notes == ("warning: random crops pad 4 px on each side of 8 px images: a crop can be "
                                        "half padding",)
    no_crop = fit_to_image(8, 0, crop=False)
    assert (no_crop.crop_padding, no_crop.notes) == (0, ())


def test_auto_augment_is_deterministic_given_the_generator():
    x = _images(n=4, size=16)
    aug = BatchAugment(MEAN, STD, auto_augment=True)
    out = aug(x, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and torch.equal(out, aug(x, torch.Generator().manual_seed(5)))


# ----- loaders ---------------------------------------------------------------------------------
def _indexed(n: int) -> InMemoryImages:
    """Images whose label is their own index, to see which images a batch holds."""
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return InMemoryImages(images, torch.arange(n), DATASETS["cifar10"])


def _run(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))


def test_in_memory_loader_epochs_are_deterministic_permutations():
    data, aug = _indexed(23), BatchAugment(MEAN, STD, crop_padding=2, cutout_length=2)

    def make(seed: int) -> InMemoryLoader:
        return InMemoryLoader(data, list(range(23)), 5, "cpu", shuffle=True, augment=aug, seed=seed)

    loader = make(0)
    assert len(loader) == 5
    epoch0 = _run(loader)
    assert sorted(torch.cat([y for _, y in epoch0]).tolist()) == list(range(23))
    assert _same(epoch0, _run(loader)) and _same(epoch0, _run(make(0)))  # iter() replays the epoch
    loader.set_epoch(1)
    epoch1 = _run(loader)
    assert not torch.equal(epoch0[0][1], epoch1[0][1]) and not _same(epoch0, _run(make(1)))
    assert epoch0[0][0].shape == (5, 3, 8, 8) and epoch0[-1][0].shape == (3, 3, 8, 8)


def test_in_memory_loader_subset_order_and_drop_last():
    loader = InMemoryLoader(_indexed(20), [3, 4, 5, 6, 7, 8, 9], 3, "cpu", shuffle=False, augment=None, seed=0,
                            drop_last=True)
    batches = _run(loader)
    assert len(loader) == 2 and [y.tolist() for _, y in batches] == [[3, 4, 5], [6, 7, 8]]
    assert torch.equal(batches[0][0], normalize(_indexed(20).images[3:6], MEAN, STD))


def test_in_memory_loader_resumes_mid_epoch_exactly():
    data, aug = _indexed(30), BatchAugment(MEAN, STD, crop_padding=2, cutout_length=3)
    loader = InMemoryLoader(data, range(30), 4, "cpu", shuffle=True, augment=aug, seed=7)
    loader.set_epoch(2)
    full, it = _run(loader), iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batch": 3}
    fresh = InMemoryLoader(data, range(30), 4, "cpu", shuffle=True, augment=aug, seed=7)
    fresh.load_state_dict(state)
    assert _same(_run(fresh), full[3:])
    assert _same(_run(fresh), full)  # the loaded position applies to one pass only


def test_ranks_share_each_epoch_disjointly():
    data, n = _indexed(11), 11
    loaders = [InMemoryLoader(data, range(n), 2, "cpu", shuffle=True, augment=None, seed=4, rank=r, world_size=2)
               for r in range(2)]
    for epoch in (0, 1):
        for loader in loaders:
            loader.set_epoch(epoch)
        shards = [torch.cat([y for _, y in _run(loader)]).tolist() for loader in loaders]
        assert len(loaders[0]) == len(loaders[1]) == 3 and len(shards[0]) == len(shards[1]) == 6
        order = loaders[0].order(epoch).tolist()
        assert shards[0] == order
        assert sorted(set(shards[0]) | set(shards[1])) == list(range(n))
        assert len(set(shards[0]) & set(shards[1])) == 1  # the one image repeated to pad 11 to 12


def test_infinite_batches_cross_epochs_and_resume():
    data = _indexed(10)

    def make() -> InMemoryLoader:
        return InMemoryLoader(data, range(10), 4, "cpu", shuffle=True,
                              augment=BatchAugment(MEAN, STD, crop_padding=2), seed=1)

    stream = InfiniteBatches(make())
    got = [next(stream) for _ in range(7)]
    assert stream.state_dict() == {"epoch": 2, "batch": 1}
    labels = [y.tolist() for _, y in got]
    assert sorted(sum(labels[:3], [])) == sorted(sum(labels[3:6], [])) == list(range(10))
    assert labels[:3] != labels[3:6]  # a new order each epoch
    resumed = InfiniteBatches(make())
    resumed.load_state_dict({"epoch": 1, "batch": 2})
    assert _same([resumed.next() for _ in range(2)], got[5:7])


def test_infinite_batches_refuses_an_empty_loader():
    loader = InMemoryLoader(_indexed(3), range(3), 4, "cpu", shuffle=True, augment=None, seed=0, drop_last=True)
    with pytest.raises(UserError, match="fewer images than one batch"):
        InfiniteBatches(loader)


def test_dataloader_interface_shards_and_resumes():
    dataset = torch.utils.data.TensorDataset(torch.randn(9, 2), torch.arange(9))
    loaders = [make_dataloader(dataset, batch_size=2, shuffle=True, workers=0, seed=3, rank=r, world_size=2)
               for r in range(2)]
    for loader in loaders:
        loader.set_epoch(1)
    shards = [torch.cat([y for _, y in loader]).tolist() for loader in loaders]
    assert sorted(set(shards[0]) | set(shards[1])) == list(range(9)) and len(shards[0]) == len(shards[1]) == 5
    full = _run(loaders[0])
    stream = InfiniteBatches(loaders[0])
    stream.load_state_dict({"epoch": 1, "batch": 1})
    assert _same([next(stream) for _ in range(2)], full[1:3])
    assert stream.state_dict() == {"epoch": 1, "batch": 3}
    next(stream)
    assert stream.state_dict() == {"epoch": 2, "batch": 1}
