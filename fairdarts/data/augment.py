"""The DARTS CIFAR augmentation, applied to a whole uint8 batch on its own device.

torchvision's ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``,
``Normalize`` and DARTS' ``Cutout``, image by image in DataLoader workers, keep a GPU waiting on
the CPU for small networks. Here one index gather does the crop and the flip for the whole
batch, one mask does the cutout, and all randomness comes from a generator the caller seeds,
so a batch is a pure function of its images and the generator's state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor


#: DARTS' CIFAR crop: ``RandomCrop(32, padding=4)``.
CROP_PADDING = 4


@dataclass(frozen=True)
class Fitted:
    """The augmentation sizes for one image size, and the log lines that say what was chosen."""
    crop_padding: int
    cutout_length: int
    notes: tuple[str, ...]


def fit_to_image(image_size: int, cutout_length: int | None, crop: bool = True) -> Fitted:
    """Crop padding and cutout length (0: off) for ``image_size`` px images, with a note for
    anything that was scaled or makes little sense at that size.

    ``cutout_length=None`` takes half the image side: DARTS' 16 px at 32 px, 8 px at 16 px (a
    16 px square on a 16 px image blanks the whole image when centred on it). A length given as
    large as the image is kept but warned about. The crop padding stays DARTS' 4 px (the
    search's numbers depend on it); where it reaches half the image side a crop can be more
    padding than image, which is warned about too.
    """
    notes = []
    length = 0 if cutout_length == 0 else (cutout_length or max(1, image_size // 2))
    if cutout_length is None and length:
        notes.append(f"cutout {length} px: half the {image_size} px images (--cutout_length sets it)")
    elif length >= image_size:
        notes.append(f"warning: --cutout_length {length} is as large as the {image_size} px images: a square "
                     f"centred on an image blanks all of it (half the side, {image_size // 2}, is DARTS' ratio)")
    padding = CROP_PADDING if crop else 0
    if padding and 2 * padding >= image_size:
        notes.append(f"warning: random crops pad {padding} px on each side of {image_size} px images: a crop can "
                     "be half padding")
    return Fitted(padding, length, tuple(notes))


def _stats(values: Sequence[float], device: torch.device) -> Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(device)


def normalize(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float ``(x / 255 - mean) / std``, what ToTensor + Normalize give."""
    m = mean if isinstance(mean, Tensor) else _stats(mean, images.device)
    s = std if isinstance(std, Tensor) else _stats(std, images.device)
    return images.float().div_(255.0).sub_(m).div_(s)


class BatchAugment:
    """Random crop with zero padding, horizontal flip, normalisation and cutout of a uint8 batch.

    ``crop_padding=0, flip=False`` (and no cutout) is plain normalisation, for evaluation.
    ``auto_augment`` first applies torchvision's CIFAR-10 AutoAugment policy image by image on
    the CPU: much slower, and only there because published results use it.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], crop_padding: int = 4, flip: bool = True,
                 cutout_length: int = 0, auto_augment: bool = False) -> None:
        if crop_padding < 0 or cutout_length < 0:
            raise ValueError(f"crop_padding and cutout_length must be >= 0, got {crop_padding}, {cutout_length}")
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_padding, self.flip, self.cutout_length = crop_padding, flip, cutout_length
        self.auto_augment = auto_augment
        self._cache: dict[torch.device, tuple[Tensor, Tensor]] = {}  # mean, std per device: no copy per batch

    def __repr__(self) -> str:
        return (f"BatchAugment(crop_padding={self.crop_padding}, flip={self.flip}, "
                f"cutout_length={self.cutout_length}, auto_augment={self.auto_augment})")

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment and normalise uint8 ``images`` ``[B, C, H, W]``. The random draws are made on
        the generator's device in a fixed order; a generator on the images' device (what
        :class:`~fairdarts.data.loaders.InMemoryLoader` passes) needs no host-device copy."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 [B, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if self.auto_augment:
            images = self._auto_augment(images, generator)
        if self.crop_padding or self.flip:
            images = self._crop_flip(images, generator)
        if images.device not in self._cache:
            self._cache[images.device] = (_stats(self.mean, images.device), _stats(self.std, images.device))
        out = normalize(images, *self._cache[images.device])
        if self.cutout_length:
            out = out.mul_(self._cutout_keep(out, generator))
        return out

    def _draw(self, high: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
        return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device, non_blocking=True)

    def _crop_flip(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Pad with zeros, then gather each image's window: its rows, then its columns. A flipped
        image reads its columns right to left, so the flip costs nothing more."""
        b, c, h, w = images.shape
        p, dev = self.crop_padding, images.device
        top, left = self._draw(2 * p + 1, b, generator, dev), self._draw(2 * p + 1, b, generator, dev)
        flipped = self._draw(2, b, generator, dev).bool() if self.flip else torch.zeros(b, dtype=torch.bool, device=dev)
        out = torch.nn.functional.pad(images, (p, p, p, p)) if p else images
        if p:
            rows = torch.arange(h, device=dev) + top[:, None]  # [B, H]
            out = out.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
        cols = torch.arange(w, device=dev)
        cols = torch.where(flipped[:, None], cols.flip(0), cols) + left[:, None]  # [B, W]
        return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))

    def _cutout_keep(self, out: Tensor, generator: torch.Generator) -> Tensor:
        """1 outside, 0 inside one ``cutout_length`` square per image, its centre uniform over the
        image and clipped at the borders, as DARTS' ``Cutout`` (which acts after Normalize)."""
        b, _, h, w = out.shape
        dev, half = out.device, self.cutout_length // 2
        cy, cx = self._draw(h, b, generator, dev), self._draw(w, b, generator, dev)
        ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
        in_rows = (ys[None, :] >= (cy - half)[:, None]) & (ys[None, :] < (cy + half)[:, None])  # [B, H]
        in_cols = (xs[None, :] >= (cx - half)[:, None]) & (xs[None, :] < (cx + half)[:, None])  # [B, W]
        return (~(in_rows[:, :, None] & in_cols[:, None, :])).unsqueeze(1).to(out.dtype)

    def _auto_augment(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """AutoAugment draws from torch's global generator, so it runs inside a forked RNG
        seeded from ``generator``: the result stays a function of the generator's state."""
        from torchvision.transforms import AutoAugment, AutoAugmentPolicy

        policy = AutoAugment(AutoAugmentPolicy.CIFAR10)
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=generator.device))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cpu = images.cpu()
            out = torch.stack([policy(img) for img in cpu])
        return out.to(images.device)
