"""The Fair DARTS zero-one loss.

With independent sigmoid gates nothing forces an op weight towards 0 or 1, so a derived
cell would have to threshold values near 0.5. The zero-one loss rewards gates for leaving
0.5 (paper eq. 5): ``L_01 = -mean((sigmoid(alpha) - 0.5)^2)`` over every entry of both
alpha matrices (``l2``, the official default) or ``-mean(|sigmoid(alpha) - 0.5|)`` (``l1``).
"""
from __future__ import annotations

from typing import Sequence

import torch

SEP_LOSSES: tuple[str, ...] = ("l2", "l1")


def zero_one_loss(alphas: Sequence[torch.Tensor], form: str = "l2") -> torch.Tensor:
    """Mean over all entries of all alpha tensors; minimising it pushes gates to 0 or 1."""
    dist = torch.cat([torch.sigmoid(a).flatten() for a in alphas]) - 0.5
    if form == "l2":
        return -dist.pow(2).mean()
    if form == "l1":
        return -dist.abs().mean()
    raise ValueError(f"unknown zero-one loss form {form!r}; use one of {SEP_LOSSES}")
