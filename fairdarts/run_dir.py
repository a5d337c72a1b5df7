"""The run folder of a search or a training run: creating it safely, logging, TensorBoard
metrics, progress bars and atomic writes of its small artefacts (genotype.json, config.yaml...).

Under torchrun only the main rank writes; the other ranks get loggers and writers that keep
quiet, so callers need not test the rank at every line.
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, TypeVar

from tqdm import tqdm

from fairdarts.checkpoint import atomic_write
from fairdarts.errors import UserError

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def prepare_run_dir(save: str | Path, resume: bool, is_main: bool = True) -> Path:
    """Create the run folder (and its parents) and check it can be written.

    A folder that already holds files is only reused with ``resume``: a finished run is never
    overwritten by accident. Only the main rank creates and checks; the others just get the path.
    """
    path = Path(save)
    if not is_main:
        return path
    if path.exists() and not path.is_dir():
        raise UserError(f"run folder {path} is a file; choose another --save")
    if path.is_dir() and any(path.iterdir()) and not resume:
        raise UserError(f"run folder {path} already exists and is not empty; pass --resume {path} "
                        "to continue it or choose another --save")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # mkdir succeeds on existing read-only folders
            pass
    except OSError as exc:
        raise UserError(f"cannot write the run folder {path}: {exc.strerror or exc}; choose another --save") from None
    return path


def default_run_name(prefix: str) -> str:
    """``runs/<prefix>-YYYYMMDD-HHMMSS``, the run folder when ``--save`` is not given."""
    return f"runs/{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def setup_logger(run_dir: Path | None, is_main: bool, name: str = "fairdarts") -> logging.Logger:
    """Timestamped lines to stdout and ``run_dir/log.txt`` (appended to, so a resumed run keeps
    its history). Non-main ranks log warnings only, to stdout, and write no file.

    Calling it again replaces the handlers, so that several runs in one process (tests) do not
    write each line twice or into the previous run's log.
    """
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    handlers: list[logging.Handler] = [TqdmAwareHandler(sys.stdout)]
    if is_main and run_dir is not None:
        handlers.append(logging.FileHandler(Path(run_dir) / "log.txt", mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
    return logger


class TqdmAwareHandler(logging.StreamHandler):
    """Writes each line through ``tqdm.write``: a line logged while a progress bar is drawn
    clears the bar, prints, and redraws it below, instead of landing on the bar's line. Without
    a bar it is a plain stream handler."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # logging's own contract: a failing handler reports, never raises
            self.handleError(record)


class MetricsWriter:
    """TensorBoard scalars and histograms under ``run_dir/tensorboard``.

    Does nothing when not ``enabled`` (non-main ranks) or when tensorboard is not installed
    (one warning): metrics are a convenience, never a reason for a run to fail.
    """

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self._writer: Any = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            logging.getLogger("fairdarts").warning("tensorboard is unavailable (%s); no metrics are written", exc)
            return
        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, value, step)

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        if self._writer is not None:
            self._writer.add_histogram(tag, values, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def progress(iterable: Iterable[T], total: int | None, desc: str, enabled: bool) -> Iterable[T]:
    """A tqdm bar (with rate and ETA) over ``iterable`` when enabled and stderr is a terminal;
    else ``iterable`` itself (log files and CI output get the caller's plain lines instead of
    bar redraws)."""
    if not (enabled and sys.stderr.isatty()):
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step (temp file + rename): readers never see half a file."""
    try:
        atomic_write(path, data)
    except OSError as exc:
        raise UserError(f"could not write {path}: {exc.strerror or exc}; its previous version, if any, "
                        "is intact") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
