"""Checkpoints that survive a crash and cannot run code when loaded.

* :func:`save_checkpoint` replaces the file atomically: a kill or a full disk part way leaves the
  previous checkpoint as it was, so ``--resume`` always finds a whole one.
* :func:`load_checkpoint` always uses ``torch.load(..., weights_only=True)``: a checkpoint is data
  (tensors, dicts, lists, tuples, str/int/float/bool/None), never pickled objects, which could
  run arbitrary code. Everything we save keeps to those types.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import IO, Any, Callable

import torch

from fairdarts.errors import UserError, one_line

Opener = Callable[..., IO[bytes]]

#: ``format`` of a retraining checkpoint: weights under ``state_dict``, the genotype under
#: ``genotype`` and its network record under ``network``
#: (:meth:`fairdarts.search_space.NetworkSpec.to_dict`), the dataset under ``dataset``.
TRAIN_FORMAT = "fairdarts-train/1"


def atomic_write(path: str | Path, data: bytes, opener: Opener = open) -> None:
    """Write ``data`` to ``path`` all at once or not at all.

    The bytes go to ``.<name>.tmp-<pid>`` in the same folder (``os.replace`` is atomic only
    within one file system), are fsynced, then renamed onto ``path``; the folder is fsynced so
    the rename itself survives a power cut. On any failure the temporary file is removed and the
    error re-raised, with ``path`` untouched. The temporary file is created exclusively and the
    rename replaces a link at ``path`` rather than writing through it, so no file outside the
    folder is ever written. ``opener(path, "xb")`` lets tests inject a failing writer.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)  # a killed run's leftover, or a planted link: "xb" never follows one
        with opener(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # folders cannot be opened for fsync on some systems (Windows)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_PLAIN_SCALARS = (str, int, float, bool, complex, bytes, type(None), torch.dtype, torch.device)


def check_weights_only(obj: Any, where: str = "state") -> None:
    """Raise TypeError at the first value ``torch.load(weights_only=True)`` would refuse.

    Caught at save time, a stray ``numpy.float64`` or namedtuple is a bug to fix; caught at
    ``--resume`` time, it is a run that cannot be continued. Scalars are matched by exact type
    because NumPy's scalars subclass ``float`` and ``int`` and are refused all the same.
    """
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            check_weights_only(key, f"{where} key {key!r}")
            check_weights_only(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple, set, torch.Size):
        for i, value in enumerate(obj):
            check_weights_only(value, f"{where}[{i}]")
    elif not (isinstance(obj, torch.Tensor) or type(obj) in _PLAIN_SCALARS):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, which "
                        "torch.load(weights_only=True) refuses; store tensors and plain Python types only")


class WriteError(UserError):
    """A file could not be written (a full disk, a read-only folder); the message says, for that
    file, whether its previous version is intact. A run adds what its folder keeps."""


def write_error(path: Path, exc: OSError) -> WriteError:
    """The one-line error of a failed atomic write of ``path``, true about that file (the write
    left it as it was)."""
    kept = "its previous version is intact" if path.is_file() else "it was not written (none existed before)"
    return WriteError(f"could not write {path}: {exc.strerror or one_line(exc)}; {kept}")


def save_checkpoint(state: dict[str, Any], path: str | Path, opener: Opener = open) -> None:
    """Atomically save ``state`` to ``path``; it must hold weights_only-loadable types only
    (see :func:`check_weights_only`). A failed write is a :class:`WriteError`.

    The state is serialised in memory first: ``torch.save`` streaming into a file turns a
    failing write into an opaque RuntimeError, while a plain write keeps the OSError (disk full)
    that the message below needs.
    """
    check_weights_only(state)
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        atomic_write(path, buffer.getvalue(), opener)
    except OSError as exc:
        raise write_error(path, exc) from None


def _corrupt_detail(path: Path, exc: BaseException) -> str:
    """Why ``path`` could not be read: what its first bytes say, else the telling line of torch's error
    (its weights_only errors open with a long preamble)."""
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        return "the file is empty"
    if head != b"PK" and head[:1] != b"\x80":
        return "it has neither the zip nor the pickle header of a PyTorch file"
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0] if lines else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; every failure is a one-line UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a checkpoint file; pass the checkpoint file inside it")
    if not path.exists():
        raise UserError(f"checkpoint {path} not found; check the path (a run folder holds checkpoint.pt)")
    if not path.is_file():
        raise UserError(f"{path} is not a regular file (a device, pipe or socket); pass a checkpoint file")
    try:
        with warnings.catch_warnings():  # a legacy pickle warns about its protocol on stderr: the error says enough
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise UserError(f"cannot read checkpoint {path}: {exc.strerror or one_line(exc)}") from None
    except Exception as exc:  # torch reports corrupt files as RuntimeError, UnpicklingError, EOFError, KeyError...
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused:
            raise UserError(f"{path} holds arbitrary Python objects ({refused.group(1)}) and was not loaded for "
                            "safety; re-save it with tensors and plain types only") from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt): "
                        f"{_corrupt_detail(path, exc)}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} holds a {type(state).__name__}, not a checkpoint dict")
    return state
