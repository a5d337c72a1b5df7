"""How many intra-op CPU threads a command uses (``--threads``).

PyTorch sizes its thread pool to the machine, not to what the process may use or to the
other jobs on it. When two processes each run as many threads as there are cores, the
threads spin-wait on each other: on a shared 2-core machine the README smoke search went
from 25 s to 16 min that way. The default here is the cores this process may run on (its
CPU affinity, which ``taskset``, cgroups and batch schedulers narrow), shared among the
torchrun ranks of the node; ``OMP_NUM_THREADS``, when set, wins as it does for PyTorch.
"""
from __future__ import annotations

import os

import torch

from fairdarts.errors import UserError

HELP = ("intra-op CPU threads; 1 when other jobs share the cores (README: Threads) "
        "(default: $OMP_NUM_THREADS, else the cores this process may use)")


def available_cores() -> int:
    """The default ``--threads``: ``$OMP_NUM_THREADS`` if set, else this process's CPUs divided
    among the local torchrun ranks (at least 1)."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity mask
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def machine_cpus() -> int:
    """The logical CPUs of this machine: more intra-op threads, or more than
    :data:`WORKERS_PER_CPU` DataLoader workers each, can only slow a run down (a million of them
    never start at all)."""
    return os.cpu_count() or 1


#: DataLoader worker processes per logical CPU that ``--workers`` may ask for.
WORKERS_PER_CPU = 4


def set_threads(threads: int | None) -> int:
    """Give this process ``threads`` intra-op threads (``None``: :func:`available_cores`) and
    return the count in effect, which the commands record in ``config.yaml`` and the log. More
    than the machine's CPUs is refused (one line): the thread pool would take minutes to start."""
    count = threads or available_cores()
    if count > machine_cpus():
        source = f"--threads {threads}" if threads else f"OMP_NUM_THREADS={count}"
        raise UserError(f"{source} is more than the {machine_cpus()} CPUs of this machine; use at most that many")
    torch.set_num_threads(count)
    return torch.get_num_threads()


def check_workers(workers: int) -> None:
    """Refuse (one line) more DataLoader worker processes than the machine can run."""
    if workers > WORKERS_PER_CPU * machine_cpus():
        raise UserError(f"--workers {workers} is more than {WORKERS_PER_CPU} per CPU of this machine "
                        f"({WORKERS_PER_CPU * machine_cpus()}); use fewer")
