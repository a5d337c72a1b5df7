"""Top-1 / top-5 hits, autocast and one evaluation pass: what training and evaluation both measure.

A leaf of the package (it imports torch only), so that :mod:`fairdarts.evaluation` can measure a
network without importing :mod:`fairdarts.train`, and the trainer reports the very same sums.
"""
from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = tuple[Tensor, Tensor]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def topk_correct(logits: Tensor, y: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Hits among the top-k predictions for each k (k larger than the class count counts all)."""
    kmax = min(max(ks), logits.size(1))
    pred = logits.detach().topk(kmax, dim=1).indices
    hits = pred.eq(y.unsqueeze(1))
    return [hits[:, :min(k, kmax)].any(dim=1).sum() for k in ks]


def autocast(device: torch.device, enabled: bool, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA only: CPU autocast is slower than float32 for these nets."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[dtype])



@torch.no_grad()
def evaluate_sums(model: nn.Module, batches: Iterable[Batch], max_steps: int | None = None,
                  amp: bool = False, amp_dtype: str = "bf16", channels_last: bool = False) -> Tensor:
    """``[cross entropy sum, top-1 hits, top-5 hits, samples]`` in eval mode (float64 on the
    model's device, so ranks all-reduce before dividing). The model is left in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for k, (x, y) in enumerate(batches):
        if max_steps is not None and k >= max_steps:
            break
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp, amp_dtype):
            logits, _ = model(x)
        c1, c5 = topk_correct(logits, y)
        sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                             c1.double(), c5.double(), torch.tensor(float(len(y)), device=device, dtype=torch.float64)])
    return sums
