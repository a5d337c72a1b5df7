"""Native CPU kernels for the search supernet: compiled from C on first use, loaded with ctypes.

Why C and not a PyTorch extension: the kernels need no PyTorch headers (they work on raw
pointers of contiguous channels-last tensors), so one ``cc -O3 -march=native`` call builds
them in a second or two, with no ninja, no torch headers and no build step at install time.
The library is cached under ``$FAIRDARTS_KERNEL_CACHE`` (default ``~/.cache/fairdarts/kernels``)
by a hash of the sources, the compiler, its flags and this CPU's instruction-set flags, so a
cache shared between machines never hands one CPU the code built for another; a cached library
is loaded only if its bytes match the digest recorded when it was built (:mod:`.cache`).

When no C compiler is at hand, the build fails, the cache folder cannot be used, or
``FAIRDARTS_NATIVE_KERNELS=0``, the supernet runs PyTorch's own kernels (same numbers, slower)
and the reason is logged once, in one line. ``FAIRDARTS_NATIVE_SANITIZE=1`` builds the same
sources with AddressSanitizer and UBSan into a cache of their own (docs/native_kernels.md).

Threads: built with ``-fopenmp`` (retried without it where the compiler has no OpenMP), the
library links ``libgomp.so.1``, which the dynamic loader resolves to the copy PyTorch has
already loaded: one OpenMP runtime, one thread pool. The kernels use PyTorch's thread count
(``torch.get_num_threads()``, i.e. ``--threads``), and give the same bits for any count.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import torch

from fairdarts.errors import counted
from fairdarts.search_space.native import cache

ENV_SWITCH = "FAIRDARTS_NATIVE_KERNELS"
ENV_CACHE = "FAIRDARTS_KERNEL_CACHE"
ENV_SANITIZE = "FAIRDARTS_NATIVE_SANITIZE"
VERSION = 5
SOURCES = ("kernels.c", "kernels_scalar.h", "kernels_vec.h", "kernels_chain.h", "kernels_pool.h")
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC", "-fno-math-errno")
OPENMP = "-fopenmp"
#: Added for the sanitizer build (``FAIRDARTS_NATIVE_SANITIZE=1``): any finding aborts the process.
SANITIZE_FLAGS = ("-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all")

_HERE = Path(__file__).resolve().parent
_state: dict[str, object] = {}


class BuildError(RuntimeError):
    """The compiler failed, or what it wrote does not load."""


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


def sanitized() -> bool:
    """``FAIRDARTS_NATIVE_SANITIZE=1``: the kernels are built with AddressSanitizer and UBSan."""
    return os.environ.get(ENV_SANITIZE, "0") == "1"


def _flags() -> tuple[str, ...]:
    return (*FLAGS, *SANITIZE_FLAGS) if sanitized() else FLAGS


def _cache_dir() -> Path:
    """The cache folder; the sanitizer builds have one of their own, so they never mix."""
    base = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "fairdarts" / "kernels")
    return base / "sanitize" if sanitized() else base


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``cmd`` with its output as text (undecodable bytes replaced: a compiler may print anything)."""
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)


def _library_name(cc: str, flags: tuple[str, ...]) -> tuple[str, str]:
    """(the cache name of the library, the compiler's version line). The name is a hash of the
    sources, the compiler, its flags and this CPU's instruction-set flags, so a cache shared
    between machines never hands one CPU the code built for another."""
    version = _run([cc, "--version"], timeout=60)
    if version.returncode:
        raise BuildError(f"{cc} --version failed: {_last_line(version.stderr) or f'exit {version.returncode}'}")
    h = hashlib.sha256()
    for source in SOURCES:
        h.update((_HERE / source).read_bytes())
    for part in (version.stdout, " ".join(flags), _cpu_flags()):
        h.update(part.encode())
    prefix = "fairdarts_kernels_sanitize_" if sanitized() else "fairdarts_kernels_"
    return f"{prefix}{h.hexdigest()[:20]}.so", version.stdout.strip().split("\n")[0]


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


def _compile(cc: str, flags: tuple[str, ...], out: Path) -> None:
    done = _run([cc, *flags, "-o", str(out), str(_HERE / "kernels.c"), "-lm"], timeout=300)
    if done.returncode:
        raise BuildError(f"{cc} failed: {_last_line(done.stderr) or f'exit {done.returncode}'}")


def _cached_or_built(cc: str, folder: Path, flags: tuple[str, ...]) -> ctypes.CDLL:
    """The library for these flags: the cached one if its bytes match their recorded digest,
    else built now (and then cached)."""
    name, compiler = _library_name(cc, flags)
    data = cache.cached(folder, name)
    if data is not None:
        lib = cache.load_bytes(folder, data)
        _check_version(lib)
        _state["origin"] = f"{name}, from the cache"
        return lib
    try:
        lib, data = cache.build(folder, lambda out: _compile(cc, flags, out))
    except OSError as exc:  # the compiler's output does not load: garbage, or nothing at all
        raise BuildError(f"{cc} built no loadable library ({exc})") from exc
    _check_version(lib)
    cache.publish(folder, name, data, {"compiler": compiler, "flags": list(flags), "sources": list(SOURCES)})
    _state["origin"] = f"{name}, built now"
    return lib


def _check_version(lib: ctypes.CDLL) -> None:
    if lib.fairdarts_kernels_version() != VERSION:
        raise RuntimeError("kernel library version mismatch")


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
    if sanitized() and not _asan_runtime_loaded():
        raise RuntimeError(f"{ENV_SANITIZE}=1 needs the ASan runtime preloaded: "
                           f"LD_PRELOAD=$({cc} -print-file-name=libasan.so)")
    folder = cache.open_cache(_cache_dir())
    try:
        lib = _cached_or_built(cc, folder, (*_flags(), OPENMP))
    except BuildError:  # a compiler without OpenMP: the one-thread library
        lib = _cached_or_built(cc, folder, _flags())
    _declare(lib)
    return lib


def _asan_runtime_loaded() -> bool:
    """A library built with ``-fsanitize=address`` aborts the process when it is loaded without
    the ASan runtime already in it: check first."""
    try:
        return "libasan" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


def library() -> ctypes.CDLL | None:
    """The loaded kernels, set to PyTorch's current thread count, or None (the reason is logged
    once and kept in :func:`unavailable_reason`)."""
    if "lib" not in _state:
        try:
            _state["lib"] = _load()
        except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as exc:
            _state["lib"] = None
            _state["reason"] = " ".join(str(exc).split())  # one line, whatever a compiler printed
            switched_off = os.environ.get(ENV_SWITCH, "1") == "0"
            logging.getLogger("fairdarts").log(logging.INFO if switched_off else logging.WARNING,
                                               "native CPU kernels: off (%s): PyTorch's slower kernels run",
                                               _state["reason"])
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


#: What the library runs when it is loaded (the rest is always PyTorch's).
COVERS = "conv chains, mixed edges, 3x3 pools and stride-2 skips of CPU search training and validation"


def status() -> str:
    """One line for a run's log: which kernels run and why (the library in use and where it came
    from, or why PyTorch's kernels run instead)."""
    lib = library()
    if lib is None:
        return f"off ({unavailable_reason()}): PyTorch's kernels throughout"
    threads = f"OpenMP, {counted(torch.get_num_threads(), 'thread')}" if openmp() else "no OpenMP, 1 thread"
    return f"on ({_state['origin']}, {threads}): {COVERS}; PyTorch's kernels for the rest"


def openmp() -> bool:
    """The loaded library runs its chunks on PyTorch's OpenMP threads (False: one thread)."""
    lib = library()
    return bool(lib is not None and lib.fairdarts_kernels_openmp())


def reset() -> None:
    """Forget the loaded library (tests switch the kernels off and on with the environment)."""
    _state.clear()


@contextlib.contextmanager
def switched_off() -> Iterator[None]:
    """PyTorch's kernels inside the block, the loaded library again after it, without loading
    anything anew (``FAIRDARTS_NATIVE_KERNELS=0`` with :func:`reset` would hash and load the
    library again on the next call): what a benchmark needs to interleave the two call by call."""
    saved = dict(_state)
    _state.clear()
    _state.update(lib=None, reason="switched off for this block")
    try:
        yield
    finally:
        _state.clear()
        _state.update(saved)
