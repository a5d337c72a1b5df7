"""Devices and torchrun: one code path for a single process and for ``torchrun --nproc_per_node N``.

A plain ``python train_search.py`` gets a single-process :class:`DistContext` and every
collective below is a no-op, so the loops call them unconditionally::

    dist = init_distributed(cfg.device)
    ...
    all_reduce_mean_(loss_sum)      # identical on every rank afterwards
    cleanup_distributed()
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from fairdarts.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when there is one, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return device
    raise UserError(f"unknown --device {name!r}; use auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes and its device."""
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """The rank that writes files and logs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def per_rank_batch(self, global_batch: int) -> int:
        """``--batch_size`` is global: each of the ``world_size`` ranks takes an equal share."""
        share = global_batch // self.world_size
        if share < 1 or share * self.world_size != global_batch:
            raise UserError(f"--batch_size {global_batch} (global) does not split evenly over "
                            f"{self.world_size} ranks; use a multiple of {self.world_size}")
        return share


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def init_distributed(device_name: str) -> DistContext:
    """Join torchrun's process group if there is one (``WORLD_SIZE`` > 1), else run alone.

    Under torchrun each process takes the GPU ``cuda:LOCAL_RANK`` and NCCL; on CPU, gloo.
    """
    world_size, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistContext(0, 1, 0, device)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                            "lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, device)


def wait_for_all_ranks() -> None:
    """A barrier at the end of a finished run: no rank leaves the process group (and tears down
    its gloo connections) while a peer is still writing its last outputs or in a collective."""
    if _active():
        dist.barrier()


def cleanup_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum_(tensor: Tensor) -> Tensor:
    """Sum ``tensor`` over ranks, in place; every rank must call it with the same shape.

    A non-contiguous tensor (a view, e.g. a gradient sliced out of a larger one) is reduced
    through a contiguous copy: gloo's in-place all-reduce would leave such a view unchanged."""
    if _active():
        if tensor.is_contiguous():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        else:
            dense = tensor.contiguous()
            dist.all_reduce(dense, op=dist.ReduceOp.SUM)
            tensor.copy_(dense)
    return tensor


def all_reduce_mean_(tensor: Tensor) -> Tensor:
    """Average a floating-point ``tensor`` over ranks, in place."""
    if _active():
        all_reduce_sum_(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def average_gradients_(params: Iterable[Tensor]) -> None:
    """Average the ``.grad`` of ``params`` over ranks, for parameters outside DDP (the alphas).

    Every rank must hold gradients for the same parameters, or the collectives would not match.
    """
    for p in params:
        if p.grad is not None:
            all_reduce_mean_(p.grad)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it (a picklable object, e.g. a run folder name chosen by rank 0)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here."""
    if _active():
        dist.barrier()
