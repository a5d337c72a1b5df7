"""The build cache of the native kernels: a library is loaded only if this process built it, or if
its bytes match the SHA-256 digest recorded when it was built.

Why: loading a shared library runs its code (its constructors) at once, so a file found in the
cache must not be trusted by its name. A library planted under the expected name, one replaced
or truncated by another program, a 0-byte file a broken compiler left behind: none of them
matches its recorded digest, so each is rebuilt and never loaded. The rules:

* the cache folder is created owner-only (0700) and refused when it is not a folder of this
  user or when others may write to it (whoever can write there can plant a library);
* a build runs in a private folder inside the cache; the library is loaded from there (this
  process built it), then published: the library, then its digest (``NAME.sha256``), each
  written under a unique temporary name and renamed into place, so a reader sees either nothing
  or a complete file, and two processes building at once never write into the same file;
* a cached library is read once, its bytes are checked against the digest, and exactly those
  bytes are loaded from a private copy: a swap between the check and the load cannot win.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import json
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable, Iterator

DIGEST_SUFFIX = ".sha256"
#: No genuine library comes near this (~0.2 MB; ~3 MB with sanitizers): a larger file is not read.
MAX_LIBRARY_BYTES = 64 << 20
_LIBRARY_FILE = "fairdarts_kernels.so"


class CacheError(RuntimeError):
    """The cache folder cannot be used (not ours, writable by others, read-only, full)."""


def open_cache(folder: Path) -> Path:
    """``folder``, created owner-only when missing; CacheError when it is not a folder owned by this
    user or when its group or others may write to it."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as exc:
        raise CacheError(f"kernel cache {folder} cannot be created: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise CacheError(f"kernel cache {folder} is not a folder")
    if info.st_uid != os.geteuid():
        raise CacheError(f"kernel cache {folder} belongs to user id {info.st_uid}, not to this user: not used")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(f"kernel cache {folder} may be written by others (mode {stat.S_IMODE(info.st_mode):o}): "
                         "not used")
    return folder


def cached(folder: Path, name: str) -> bytes | None:
    """The bytes of the cached library ``name`` when they match its recorded digest; None when it
    is missing, or (with a warning) when it does not match: replaced, truncated, planted."""
    data = _read_regular(folder / name)
    if data is None:
        return None
    recorded = _recorded_digest(folder / (name + DIGEST_SUFFIX))
    if recorded is not None and hmac.compare_digest(recorded, hashlib.sha256(data).hexdigest()):
        return data
    why = "has no recorded digest" if recorded is None else "does not match its recorded digest"
    logging.getLogger("fairdarts").warning("kernel cache: %s %s: rebuilt, not loaded", folder / name, why)
    return None


def _read_regular(path: Path) -> bytes | None:
    """The bytes of ``path`` if it is a regular file (not a link, a FIFO or a device) of a sane size."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_LIBRARY_BYTES:
            return None
        return f.read(MAX_LIBRARY_BYTES + 1)


def _recorded_digest(path: Path) -> str | None:
    data = _read_regular(path)
    try:
        record = json.loads(data or b"null")
    except ValueError:
        return None
    digest = record.get("sha256") if isinstance(record, dict) else None
    return digest if isinstance(digest, str) else None


def load_bytes(folder: Path, data: bytes) -> ctypes.CDLL:
    """Load exactly ``data`` (checked by the caller) from a private copy that no other user can
    change; the copy is removed once loaded (the mapping stays)."""
    with _private_folder(folder) as private:
        path = private / _LIBRARY_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o700)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return ctypes.CDLL(str(path))


def build(folder: Path, compile_to: Callable[[Path], None]) -> tuple[ctypes.CDLL, bytes]:
    """(the library ``compile_to(path)`` writes, loaded, and its bytes), built in a private folder:
    this process built what it loads. OSError when the library does not load (garbage, empty)."""
    with _private_folder(folder) as private:
        path = private / _LIBRARY_FILE
        compile_to(path)
        data = _read_regular(path)
        if not data:
            raise OSError(f"the compiler wrote no library ({'empty file' if data == b'' else 'no file'})")
        return ctypes.CDLL(str(path)), data


def publish(folder: Path, name: str, data: bytes, about: dict[str, object]) -> None:
    """Put the library ``data`` into the cache as ``name``, then its digest (with ``about``: what
    it was built from); each file renamed into place complete, so readers never see a part."""
    record = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), **about}
    try:
        _write_atomically(folder, name, data)
        _write_atomically(folder, name + DIGEST_SUFFIX, json.dumps(record, indent=1).encode())
    except OSError as exc:
        raise CacheError(f"kernel cache {folder}: cannot write {name}: {exc.strerror or exc}") from exc


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _private_folder(folder: Path) -> Iterator[Path]:
    """A fresh 0700 folder inside the cache, removed afterwards (a CacheError when it cannot be made)."""
    try:
        context = tempfile.TemporaryDirectory(prefix=".private-", dir=folder)
    except OSError as exc:
        raise CacheError(f"kernel cache {folder} is not writable: {exc.strerror or exc}") from exc
    with context as private:
        yield Path(private)
