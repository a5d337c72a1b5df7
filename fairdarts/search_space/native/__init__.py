"""Native CPU kernels for the search supernet: compiled from C on first use, loaded with ctypes.

Why C and not a PyTorch extension: the kernels need no PyTorch headers (they work on raw
pointers of contiguous channels-last tensors), so one ``cc -O3 -march=native`` call builds
them in a second or two, with no ninja, no torch headers and no build step at install time.
The library is cached under ``$FAIRDARTS_KERNEL_CACHE`` (default ``~/.cache/fairdarts/kernels``)
by a hash of the sources, the compiler, its flags and this CPU's instruction-set flags, so a
cache shared between machines never hands one CPU the code built for another.

When no C compiler is at hand, or the build fails, or ``FAIRDARTS_NATIVE_KERNELS=0``, the
supernet runs PyTorch's own kernels (same numbers, slower) and the reason is logged once.

Threads: built with ``-fopenmp`` (retried without it where the compiler has no OpenMP), the
library links ``libgomp.so.1``, which the dynamic loader resolves to the copy PyTorch has
already loaded: one OpenMP runtime, one thread pool. The kernels use PyTorch's thread count
(``torch.get_num_threads()``, i.e. ``--threads``), and give the same bits for any count.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

ENV_SWITCH = "FAIRDARTS_NATIVE_KERNELS"
ENV_CACHE = "FAIRDARTS_KERNEL_CACHE"
VERSION = 5
SOURCES = ("kernels.c", "kernels_scalar.h", "kernels_vec.h", "kernels_chain.h", "kernels_pool.h")
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC", "-fno-math-errno")
OPENMP = "-fopenmp"

_HERE = Path(__file__).resolve().parent
_state: dict[str, object] = {}


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "fairdarts" / "kernels")


def _build(cc: str) -> Path:
    """The cached library for these sources, compiler and CPU: with OpenMP, or without it where
    the compiler cannot build that; built (atomically) when missing."""
    try:
        return _build_with(cc, (*FLAGS, OPENMP))
    except RuntimeError:
        return _build_with(cc, FLAGS)


def _build_with(cc: str, flags: tuple[str, ...]) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    h = hashlib.sha256()
    for source in SOURCES:
        h.update((_HERE / source).read_bytes())
    for part in (version, " ".join(flags), _cpu_flags()):
        h.update(part.encode())
    target = _cache_dir() / f"fairdarts_kernels_{h.hexdigest()[:20]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        cmd = [cc, *flags, "-o", tmp, str(_HERE / "kernels.c"), "-lm"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode:
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
            raise RuntimeError(f"{cc} failed: {last}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL) -> None:
    p, i, d, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    geometry = [i] * 11 + [c_int]  # N, H, W, Ci, Ho, Wo, Co, K, s, p, d, relu
    for suffix in ("f32", "f64"):
        signatures = {
            "chain_forward": [p] * 8 + [d, d] + geometry + [p, c_int],  # ..., num_batches_tracked, eval
            "chain_backward": [p] * 10 + geometry + [d, c_int],      # ..., gscale, accumulate
            "weighted_sum": [p, p, p, p, c_int, i],                  # out, prev, ys, w, n, numel
            "dots": [p, p, c_int, i, p],                             # g, ys, n, numel, out
            "pool3x3_forward": [p, p] + [i] * 7 + [c_int],           # x, y, N, H, W, C, Ho, Wo, s, avg
            "pool3x3_backward": [p, p, p] + [i] * 7 + [c_int],       # x, gy, gx, N, H, W, C, Ho, Wo, s, avg
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, f"{name}_{suffix}")
            fn.argtypes, fn.restype = argtypes, None
    lib.fairdarts_set_threads.argtypes, lib.fairdarts_set_threads.restype = [c_int], None
    lib.fairdarts_kernels_openmp.argtypes, lib.fairdarts_kernels_openmp.restype = [], c_int


def _load() -> ctypes.CDLL:
    if os.environ.get(ENV_SWITCH, "1") == "0":
        raise RuntimeError(f"turned off by {ENV_SWITCH}=0")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    lib = ctypes.CDLL(str(_build(cc)))
    if lib.fairdarts_kernels_version() != VERSION:
        raise RuntimeError("kernel library version mismatch")
    _declare(lib)
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, set to PyTorch's current thread count, or None (the reason is logged
    once and kept in :func:`unavailable_reason`)."""
    if "lib" not in _state:
        try:
            _state["lib"] = _load()
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
            _state["lib"] = None
            _state["reason"] = str(exc)
            switched_off = os.environ.get(ENV_SWITCH, "1") == "0"
            logging.getLogger("fairdarts").log(logging.INFO if switched_off else logging.WARNING,
                                               "native CPU kernels unavailable (%s): PyTorch's slower kernels run",
                                               exc)
    lib = _state["lib"]
    if lib is not None:
        threads = torch.get_num_threads()
        if threads != _state.get("threads"):
            lib.fairdarts_set_threads(threads)  # type: ignore[attr-defined]
            _state["threads"] = threads
    return lib  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    """Why :func:`library` is None (None when the kernels are loaded or not yet asked for)."""
    return _state.get("reason")  # type: ignore[return-value]


def status() -> str:
    """One line for a run's log: the library in use, or why PyTorch's kernels run instead."""
    lib = library()
    if lib is None:
        return f"off ({unavailable_reason()})"
    threads = f"OpenMP, {torch.get_num_threads()} threads" if openmp() else "no OpenMP, 1 thread"
    return f"on ({Path(lib._name).name}, {threads})"


def openmp() -> bool:
    """The loaded library runs its chunks on PyTorch's OpenMP threads (False: one thread)."""
    lib = library()
    return bool(lib is not None and lib.fairdarts_kernels_openmp())


def reset() -> None:
    """Forget the loaded library (tests switch the kernels off and on with the environment)."""
    _state.clear()
