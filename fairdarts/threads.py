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
    """The logical CPUs of this machine, which bound ``--threads`` and ``--workers``."""
    return os.cpu_count() or 1


#: Threads, or DataLoader worker processes, per logical CPU that ``--threads`` and ``--workers``
#: may ask for: a few share a core usefully; a million never start (the thread pool alone takes
#: minutes, the workers exhaust the process table).
PER_CPU = 4


def _check_per_cpu(count: int, source: str) -> None:
    limit = PER_CPU * machine_cpus()
    if count > limit:
        raise UserError(f"{source} is more than {PER_CPU} per CPU of this machine ({limit}); use fewer")


def set_threads(threads: int | None) -> int:
    """Give this process ``threads`` intra-op threads (``None``: :func:`available_cores`) and
    return the count in effect, which the commands record in ``config.yaml`` and the log. More
    than :data:`PER_CPU` per CPU is refused (one line)."""
    count = threads or available_cores()
    _check_per_cpu(count, f"--threads {threads}" if threads else f"OMP_NUM_THREADS={count}")
    torch.set_num_threads(count)
    return torch.get_num_threads()


def check_workers(workers: int) -> None:
    """Refuse (one line) more DataLoader worker processes than :data:`PER_CPU` per CPU."""
    _check_per_cpu(workers, f"--workers {workers}")
