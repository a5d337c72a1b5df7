"""The run folder of a search or a training run: creating it safely, logging, TensorBoard
metrics, progress bars and atomic writes of its small artefacts (genotype.json, config.yaml...).

Under torchrun only the main rank writes; the other ranks get loggers and writers that keep
quiet, so callers need not test the rank at every line.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml
from tqdm import tqdm

from fairdarts.checkpoint import atomic_write, write_error
from fairdarts.errors import UserError
from fairdarts.safe_io import check_path_length, load_yaml

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


#: What the commands write into a run folder; a folder holding nothing else is one of ours.
RUN_FILES = frozenset({"config.yaml", "log.txt", "checkpoint.pt", "model_best.pt", "genotype.json", "genotype.txt",
                       "normal_weight.npy", "reduce_weight.npy", "mobile_weight.npy", "alpha_history.npz",
                       "random_genotypes.json", "random_genotypes.txt"})
RUN_FOLDERS = frozenset({"tensorboard", "genotypes", "plots", "random"})
#: A folder holding one of these holds a run to resume or a finished run's results: never reused.
RESULTS = ("checkpoint.pt", "model_best.pt", "genotype.json", "random_genotypes.json")
LOCK = ".lock"
#: Bytes written (and removed) when a run folder is claimed: a full disk fails there, in one line,
#: instead of in the first log line or the TensorBoard writer.
PROBE_BYTES = 1 << 16
_TEMPORARY = re.compile(r"^\..+\.(tmp|download)-\d+$")  # what atomic_write leaves when killed mid-write
_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


class RunLock:
    """An exclusive OS lock (``flock``) on ``RUN/.lock``, held while a run writes its folder.

    The kernel releases it when the process ends in any way (SIGKILL included), so a lock left
    by a killed run is stale by construction: the next run takes it over, and says so when the
    file still holds the dead holder's PID (a run that ends normally clears it). The file holds
    the holder's PID, which a second writer is told. The file itself stays (deleting a lock file
    lets two processes lock two different files of the same name).
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
        self._fd: int | None = None
        self.stale_pid: int | None = None  # the PID of a killed holder whose lock was taken over

    def acquire(self, flag: str) -> "RunLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise UserError(f"cannot write the run folder {self.path.parent}: {exc.strerror or exc}; "
                            f"choose another {flag}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            other = f", or choose another {flag}" if flag != "--resume" else ""
            raise UserError(f"run folder {self.path.parent} is in use by another run ({who}); wait for it to "
                            f"end{other}") from None
        previous = _read_pid(fd)
        self.stale_pid = previous if previous and previous != os.getpid() else None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            self.release()
            raise UserError(f"cannot write the run folder {self.path.parent}: {exc.strerror or exc}; free space or "
                            f"choose another {flag}") from None
        return self

    def release(self) -> None:
        """Unlock, and clear the PID: a PID found in the file later is one of a killed holder."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _is_our_log(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            first = f.readline(200).decode("utf-8", "replace")
    except OSError:
        return False
    return not first or bool(_LOG_LINE.match(first))


def _is_our_config(path: Path) -> bool:
    """A config.yaml a run saved: a mapping with the keys every command's config has."""
    try:
        if path.stat().st_size > (1 << 20):
            return False
        data = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"save", "seed", "device"} <= set(data)


def run_folder_state(path: Path) -> tuple[str, list[str]]:
    """What a folder holds, for a fresh run that would use it: ``("empty", [])``, ``("run", results)``
    (a checkpoint or a finished run's results), ``("dead", entries)`` (only what a run that stopped before
    its first checkpoint left: reusable) or ``("foreign", entries)`` (anything else)."""
    entries = sorted(p.name for p in path.iterdir() if p.name != LOCK)
    if not entries:
        return "empty", []
    results = [name for name in RESULTS if name in entries]
    if results:
        return "run", results
    foreign = [name for name in entries
               if not (name in RUN_FILES and (path / name).is_file()
                       or name in RUN_FOLDERS and (path / name).is_dir()
                       or _TEMPORARY.match(name))]
    if "config.yaml" in entries and "config.yaml" not in foreign and not _is_our_config(path / "config.yaml"):
        foreign.append("config.yaml")
    if "log.txt" in entries and "log.txt" not in foreign and not _is_our_log(path / "log.txt"):
        foreign.append("log.txt")
    return ("foreign", sorted(foreign)) if foreign else ("dead", entries)


def _refuse_used(path: Path, state: str, entries: list[str], flag: str) -> None:
    if state == "run":
        if "checkpoint.pt" in entries:
            raise UserError(f"run folder {path} already holds a run (checkpoint.pt); pass --resume {path} to "
                            f"continue it, or choose another {flag}")
        raise UserError(f"run folder {path} already holds a finished run ({', '.join(entries)}); choose another {flag}")
    if state == "foreign":
        shown = ", ".join(entries[:4]) + (f" (+{len(entries) - 4} more)" if len(entries) > 4 else "")
        raise UserError(f"run folder {path} already exists and holds files that are not a run's ({shown}); choose "
                        f"another {flag} (an empty folder, or one left by a run that stopped before its first "
                        "checkpoint, is reused)")


def _clear_dead_run(path: Path, entries: list[str]) -> None:
    """Remove what a run that never reached its first checkpoint left, except its log."""
    for name in entries:
        target = path / name
        if name == "log.txt":
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


#: Files a run writes in place (appended to, locked): they must be its own, not another name of a user's file.
IN_PLACE = ("log.txt", LOCK)


def refuse_links(path: Path, flag: str) -> None:
    """Refuse (one line) a run folder where an entry the run writes is a symbolic link, or a file it
    writes in place is not a plain file of its own: writing would change a file outside the folder
    (a ``log.txt`` linked to a user's file would be appended to) or block (a FIFO). Atomic writes
    replace a link instead of following it; the log, the lock and the subfolders are opened in
    place, so they are checked here."""
    for name in sorted(RUN_FILES | RUN_FOLDERS | {LOCK}):
        entry = path / name
        if entry.is_symlink():
            raise UserError(f"run folder {path}: {name} is a symbolic link (to {os.readlink(entry)}); a run never "
                            f"writes through a link: remove it, or choose another {flag}")
    for name in IN_PLACE:
        try:
            info = os.lstat(path / name)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            what = "has other names (hard links)" if stat.S_ISREG(info.st_mode) else "is not a regular file"
            raise UserError(f"run folder {path}: {name} {what}; a run writes it in place, so it must be its own "
                            f"file: remove it, or choose another {flag}")


def claim_run_dir(save: str | Path, resume: bool, is_main: bool = True,
                  flag: str = "--save") -> tuple[Path, RunLock | None, str | None]:
    """Create (or reopen) the run folder and lock it: (folder, lock, note for the log).

    A fresh run takes an empty folder, or one that only a run stopped before its first
    checkpoint wrote (its ``config.yaml``, ``log.txt``, per-epoch files: they are removed, the
    log is kept and appended to); a folder with a checkpoint is only reopened with ``resume``,
    a folder with anything else never. Nothing is written into a folder that is refused.
    Only the main rank creates, checks and locks; the others just get the path.
    """
    path = Path(save)
    if not is_main:
        return path, None, None
    check_path_length(path, flag)
    if path.exists() and not path.is_dir():
        raise UserError(f"run folder {path} is a file; choose another {flag}")
    if path.is_dir():
        refuse_links(path, flag)
    if not resume and path.is_dir():
        _refuse_used(path, *run_folder_state(path), flag)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the run folder {path}: {exc.strerror or exc}; choose another {flag}") from None
    lock = RunLock(path).acquire(flag)
    note = None
    try:
        with tempfile.TemporaryFile(dir=path) as probe:  # mkdir and an existing lock file succeed on read-only
            probe.write(bytes(PROBE_BYTES))                 # folders, creating a file on a full disk: write some
            probe.flush()
            os.fsync(probe.fileno())
        if not resume:
            state, entries = run_folder_state(path)  # again, under the lock: another run may have come first
            _refuse_used(path, state, entries, flag)
            if state == "dead":
                _clear_dead_run(path, entries)
                note = (f"reusing run folder {path}: it held only what a run that stopped before its first "
                        f"checkpoint wrote ({', '.join(entries)}); its log.txt is kept")
    except OSError as exc:
        lock.release()
        raise UserError(f"cannot write the run folder {path}: {exc.strerror or exc}; choose another {flag}") from None
    except BaseException:
        lock.release()
        raise
    if lock.stale_pid is not None:
        stale = f"the lock of PID {lock.stale_pid}, which no longer runs, was taken over"
        note = f"{note}; {stale}" if note else stale
    return path, lock, note


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
        handlers.append(RunLogHandler(Path(run_dir) / "log.txt"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
    return logger


class RunLogHandler(logging.FileHandler):
    """``log.txt``, appended to: opened with ``O_NOFOLLOW`` (never through a link planted after
    the folder was checked), and a failing write (a full disk) is said once on stderr, then the
    file is left alone; the checkpoint writes report a full disk with what the run keeps."""

    def __init__(self, path: Path) -> None:
        self.failed = False
        super().__init__(path, mode="a", encoding="utf-8")

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        return open(fd, "a", encoding="utf-8")

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            print(f"warning: could not write {self.baseFilename} ({sys.exc_info()[1]}); the log goes on on stdout "
                  "only", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)


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
    (one warning): metrics are a convenience. A writer that cannot be created (a full disk) is
    one line of UserError: the run's checkpoints could not be written either.
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
        try:
            self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        except OSError as exc:  # a run folder that cannot take metrics cannot take a checkpoint either
            raise UserError(f"cannot write {Path(run_dir) / 'tensorboard'}: {exc.strerror or exc}; free space "
                            "or choose another run folder") from None

    def _call(self, action: Callable[[], Any]) -> None:
        """``action()``; an OSError (a full disk) switches the metrics off with one warning."""
        try:
            action()
        except OSError as exc:
            logging.getLogger("fairdarts").warning("could not write the TensorBoard metrics (%s); no more are "
                                                   "written", exc.strerror or exc)
            self._writer = None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self._writer is not None:
            self._call(lambda: self._writer.add_scalar(tag, value, step))

    def add_histogram(self, tag: str, values: Any, step: int) -> None:
        if self._writer is not None:
            self._call(lambda: self._writer.add_histogram(tag, values, step))

    def close(self) -> None:
        if self._writer is not None:
            self._call(self._writer.close)
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
        raise write_error(Path(path), exc) from None


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))
