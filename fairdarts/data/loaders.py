"""Batches for search and retraining, resumable at any batch with no saved generator.

:class:`InMemoryLoader` keeps a whole uint8 dataset on the device and cuts, augments and
normalises batches there. Its randomness is derived, never carried: the order of epoch ``e`` is
a function of ``(seed, e)`` and the augmentation of batch ``b`` a function of
``(seed, e, b, rank)``, so ``{'epoch', 'batch'}`` is all a checkpoint needs to replay the very
same batches. :class:`InfiniteBatches` walks a loader across epochs, for the architecture batch
that the official DARTS code fetches by re-creating a DataLoader iterator at every step.
:func:`make_dataloader` wraps on-disk datasets (ImageNet, folders) in the same interface.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import math
from typing import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

from fairdarts.data.augment import BatchAugment
from fairdarts.data.datasets import InMemoryImages, SkippedImage
from fairdarts.errors import UserError
from fairdarts.threads import check_workers

Batch = tuple[Tensor, Tensor]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, batch, ...): distinct tuples give unrelated
    streams, where ``seed * K + epoch`` would collide for some pair of seeds."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _check_rank(rank: int, world_size: int, batch_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    if batch_size < 1:
        raise UserError(f"--batch_size must be at least 1 per rank, got {batch_size}")


class _Position:
    """Where iteration stands: ``epoch`` and ``batch``, the number of batches of that epoch
    already handed out. A loaded position applies to the next ``iter()`` only; every other
    ``iter()`` is a full pass over the current epoch, as with a DataLoader."""

    def __init__(self) -> None:
        self.epoch, self.batch = 0, 0
        self._resume: int | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batch, self._resume = int(epoch), 0, None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._resume = self.batch

    def _start(self) -> int:
        start, self._resume = self._resume or 0, None
        self.batch = start
        return start


class InMemoryLoader(_Position):
    """Batches of ``data[indices]`` on ``device``: each rank's share of every epoch's order,
    ``batch_size`` images per rank, augmented by ``augment`` (``None``: normalised only).

    The images move to the device once, here; with ``world_size`` ranks the epoch's order is
    padded to a multiple of ``world_size`` by repeating its start and rank ``r`` takes every
    ``world_size``-th image from ``r``, as ``DistributedSampler`` does.
    """

    def __init__(self, data: InMemoryImages, indices: Sequence[int] | Tensor, batch_size: int,
                 device: torch.device | str, shuffle: bool, augment: BatchAugment | None, seed: int,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        _check_rank(rank, world_size, batch_size)
        index = torch.as_tensor(indices, dtype=torch.long)
        if len(index) == 0:
            raise UserError("no images to load: the dataset (or its --subset / --train_portion share) is empty")
        self.device = torch.device(device)
        whole = len(index) == len(data) and bool((index == torch.arange(len(data))).all())
        self.images = (data.images if whole else data.images[index]).to(self.device)
        self.labels = (data.labels if whole else data.labels[index]).to(self.device)
        self.info = data.info
        self.augment = (augment if augment is not None
                        else BatchAugment(data.info.mean, data.info.std, crop_padding=0, flip=False))
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(len(index) / world_size)

    def __len__(self) -> int:
        return self.per_rank // self.batch_size if self.drop_last else math.ceil(self.per_rank / self.batch_size)

    def order(self, epoch: int) -> Tensor:
        """This rank's positions in ``images`` for ``epoch``, in order (on the CPU)."""
        n = len(self.labels)
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        total = self.per_rank * self.world_size
        if total > n:
            order = torch.cat([order, order.repeat(math.ceil((total - n) / n))[: total - n]])
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[Batch]:
        start, epoch = self._start(), self.epoch
        order = self.order(epoch).to(self.device)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            g = torch.Generator(device=self.device).manual_seed(derive_seed(self.seed, epoch, b, self.rank))
            x = self.augment(self.images[idx], g)
            self.batch = b + 1
            yield x, self.labels[idx]


class InfiniteBatches:
    """``next()`` gives the loader's next batch, moving on to the next epoch by itself; its
    ``{'epoch', 'batch'}`` state resumes the stream exactly (the loader derives the rest)."""

    def __init__(self, loader: InMemoryLoader | TorchLoader) -> None:
        if len(loader) == 0:
            raise UserError("fewer images than one batch (with drop_last): lower --batch_size or use more images")
        self.loader = loader
        self.epoch, self.batch = 0, 0
        self._it: Iterator[Batch] | None = None

    def __iter__(self) -> InfiniteBatches:
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            self.loader.load_state_dict({"epoch": self.epoch, "batch": self.batch})
            self._it = iter(self.loader)
        item = next(self._it, None)
        if item is None:  # the epoch is over: start the next one
            self.epoch, self.batch = self.epoch + 1, 0
            self.loader.set_epoch(self.epoch)
            self._it = iter(self.loader)
            item = next(self._it)
        self.batch += 1
        return item

    next = __next__

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._it = None


class _SkipSampler(Sampler[int]):
    """A ``DistributedSampler`` whose first ``skip`` indices are dropped, to resume mid-epoch."""

    def __init__(self, inner: DistributedSampler) -> None:
        self.inner, self.skip = inner, 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip, 0)


_WARNED: set[str] = set()  # unreadable images already reported by this process
#: The share of a pass's images that may be unreadable (skipped, counted); more is an error.
MAX_UNREADABLE_SHARE = 0.1


def collate_skipping(items: list) -> tuple[Tensor | None, Tensor | None, list[SkippedImage]]:
    """``default_collate`` of the readable items, and the :class:`SkippedImage` ones apart."""
    skipped = [item for item in items if isinstance(item, SkippedImage)]
    kept = [item for item in items if not isinstance(item, SkippedImage)]
    if not kept:
        return None, None, skipped
    x, y = default_collate(kept)
    return x, y, skipped


class TorchLoader(_Position):
    """A DataLoader over an on-disk dataset with :class:`InMemoryLoader`'s interface. The order
    is ``DistributedSampler``'s (a function of seed and epoch, on one rank too), so a position
    resumes the same images; random transforms in workers are not replayed exactly."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        _check_rank(rank, world_size, batch_size)
        check_workers(workers)
        if len(dataset) == 0:
            raise UserError("no images to load: the dataset (or its --subset / --train_portion share) is empty")
        self.device = torch.device(device) if device is not None else None
        self.batch_size, self.drop_last = batch_size, drop_last
        self.sampler = _SkipSampler(DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                                       shuffle=shuffle, seed=seed))
        self.loader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
                                 pin_memory=self.device is not None and self.device.type == "cuda",
                                 drop_last=drop_last, persistent_workers=workers > 0,
                                 generator=torch.Generator().manual_seed(seed), collate_fn=collate_skipping)

    def __len__(self) -> int:
        n = len(self.sampler.inner)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.skip = self._start() * self.batch_size
        self.sampler.inner.set_epoch(self.epoch)
        unreadable, seen = 0, 0
        for x, y, skipped in self.loader:
            unreadable, seen = unreadable + len(skipped), seen + len(skipped) + (0 if y is None else len(y))
            self._report(skipped, unreadable)
            self.batch += 1
            if x is None:  # every image of the batch was unreadable
                continue
            if self.device is not None:
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            yield x, y
        if unreadable:
            logging.getLogger("fairdarts").warning("%d of the %d images of this pass were unreadable and skipped",
                                                   unreadable, seen)

    def _report(self, skipped: list[SkippedImage], unreadable: int) -> None:
        """One warning per unreadable file; an error once more than :data:`MAX_UNREADABLE_SHARE` of
        the pass's images are unreadable (decided as soon as the count passes that share of the
        whole pass, so a folder of broken files stops at its first batches)."""
        for item in skipped:
            if item.path not in _WARNED:
                _WARNED.add(item.path)
                logging.getLogger("fairdarts").warning("skipping unreadable image %s: %s", item.path, item.reason)
        total = len(self.sampler.inner)
        if unreadable > MAX_UNREADABLE_SHARE * total:
            raise UserError(f"{unreadable} of the {total} images of this pass are unreadable (more than "
                            f"{MAX_UNREADABLE_SHARE:.0%}; e.g. {skipped[0].path if skipped else '?'}): "
                            "repair or remove them")


def make_dataloader(dataset: Dataset, batch_size: int, shuffle: bool, workers: int, seed: int, rank: int = 0,
                    world_size: int = 1, drop_last: bool = False,
                    device: torch.device | str | None = None) -> TorchLoader:
    """Batches of an on-disk dataset (``batch_size`` per rank, pinned memory and persistent
    workers), moved to ``device`` when one is given, else left on the CPU for the caller."""
    return TorchLoader(dataset, batch_size, shuffle, workers, seed, rank, world_size, drop_last, device)


def make_loader(data: InMemoryImages | Dataset, indices: Sequence[int] | None, batch_size: int,
                device: torch.device | str, shuffle: bool, seed: int, augment: BatchAugment | None = None,
                workers: int = 0, drop_last: bool = False, rank: int = 0,
                world_size: int = 1) -> InMemoryLoader | TorchLoader:
    """The batches of ``indices`` of ``data`` (all of it for ``None``): an :class:`InMemoryLoader`
    that applies ``augment`` on the device for in-memory images, else a DataLoader with
    ``workers`` (on-disk images carry their own transforms; ``augment`` does not apply)."""
    if isinstance(data, InMemoryImages):
        index = list(range(len(data))) if indices is None else indices
        return InMemoryLoader(data, index, batch_size=batch_size, device=device, shuffle=shuffle, augment=augment,
                              seed=seed, drop_last=drop_last, rank=rank, world_size=world_size)
    subset = data if indices is None else torch.utils.data.Subset(data, indices)
    return make_dataloader(subset, batch_size, shuffle, workers, seed, rank=rank, world_size=world_size,
                           drop_last=drop_last, device=device)
