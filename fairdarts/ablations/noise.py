"""Noise on skip connections (the Fair DARTS ablation of DARTS' skip-connection collapse).

During training only, the skip connection of every stride-1 mixed op returns
``x + scale * noise``: Gaussian N(0, 1) (``N``) or uniform integers in [-3, 3) (``U``).
``scale`` decays from 1 to 0 over ``max_step`` epochs (cosine, or linear ``step``) and stays
0 afterwards; in eval mode the op is the identity again.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from fairdarts.search_space import Supernet
from fairdarts.search_space.operations import Identity

NoiseType = Literal["N", "U"]
NoiseScheduler = Literal["cosine", "step"]


def noise_scale(epoch: int, max_step: int, scheduler: str = "cosine", base: float = 1.0) -> float:
    """The noise factor of ``epoch`` (0-based): ``base`` at epoch 0, 0 from ``max_step`` on."""
    if max_step <= 0 or epoch >= max_step:
        return 0.0
    progress = epoch / max_step
    if scheduler == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    if scheduler == "step":
        return base * (1.0 - progress)
    raise ValueError(f"unknown noise scheduler {scheduler!r}; use cosine or step")


class NoisySkip(nn.Module):
    """An identity that adds scaled noise in training mode."""

    def __init__(self, noise_type: NoiseType = "N"):
        super().__init__()
        if noise_type not in ("N", "U"):
            raise ValueError(f"unknown noise type {noise_type!r}; use N or U")
        self.noise_type = noise_type
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.scale == 0.0:
            return x
        if self.noise_type == "N":
            noise = torch.randn_like(x)
        else:
            noise = torch.randint(-3, 3, x.shape, device=x.device).to(x.dtype)
        return x + self.scale * noise

    def extra_repr(self) -> str:
        return f"noise_type={self.noise_type}, scale={self.scale:.4f}"


def add_skip_noise(model: Supernet, noise_type: NoiseType) -> list[NoisySkip]:
    """Replace the stride-1 skip op of every mixed op with a :class:`NoisySkip`."""
    installed: list[NoisySkip] = []

    def replace(op: nn.Module, stride: int) -> nn.Module:
        if stride != 1 or not isinstance(op, Identity):
            return op
        noisy = NoisySkip(noise_type)
        installed.append(noisy)
        return noisy

    model.map_skip_ops(replace)
    return installed


def set_noise_scale(modules: list[NoisySkip], scale: float) -> None:
    """One scale for every noisy skip: the schedule is global, set once per epoch."""
    for m in modules:
        m.scale = scale
