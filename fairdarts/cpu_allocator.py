"""Keep freed CPU memory in the process so that the next step reuses it without page faults.

A CPU search or training step allocates and frees hundreds of activation and gradient tensors
of a few MB. glibc's malloc serves blocks above its mmap threshold with fresh ``mmap`` s and
returns freed heap tops to the kernel, so every step faults its working set in again, page by
zeroed page: at C=16, 8 layers, 32 px, batch 32 about 43,000 minor page faults (~170 MB) per
weight pass, 1.05x its CPU time with memory kept (the ``ours_glibc_malloc`` row of
``python benchmarks/bench_vs_textbook.py`` measures both; the gain in wall time is larger when
the kernel zeroes pages for other processes too). Raising the mmap threshold and the trim
threshold keeps freed blocks for reuse; the peak resident memory is unchanged, only its
release to the system is deferred until the process ends.

The command-line tools call :func:`keep_freed_memory` at start-up; a library user may call it
too. ``FAIRDARTS_KEEP_FREED_MEMORY=0`` turns it off. Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 * 1024 * 1024

ENV_SWITCH = "FAIRDARTS_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Tune glibc's malloc to keep freed memory (see the module docstring); True if it did."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD)))
