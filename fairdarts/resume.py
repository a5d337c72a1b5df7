"""Starting or resuming a run, shared by the search and the retraining.

``--resume RUN_DIR_OR_CKPT`` finds the checkpoint and rebuilds the run's saved config: a
resumed run keeps the config it was started with (its ``config.yaml``); only flags that cannot
change the result (``--epochs`` to extend a run, ``--device``, logging, ...) may be given again.
:func:`open_run` makes (or reopens) the run folder, locks it and opens its log;
:func:`write_run_config` writes its ``config.yaml`` once a resumed checkpoint has loaded (a
failed resume leaves the file as it was).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

import yaml

from fairdarts.config import resolve_config, save_config
from fairdarts.distributed import DistContext, broadcast_object
from fairdarts.errors import UserError
from fairdarts.run_config import RunConfig
from fairdarts.run_dir import RunLock, claim_run_dir, default_run_name, run_folder_state, setup_logger
from fairdarts.safe_io import load_yaml, read_text_limited

CHECKPOINT = "checkpoint.pt"
C = TypeVar("C", bound=RunConfig)
T = TypeVar("T")


def checkpoint_path(resume: str, what: str) -> Path:
    """``--resume`` takes a run folder or its checkpoint file; ``what`` names the kind of run."""
    path = Path(resume)
    folder = path if path.is_dir() else None
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.is_file():
        if folder is not None and run_folder_state(folder)[0] == "dead":
            raise UserError(f"--resume {resume}: no {CHECKPOINT} there: its run stopped before its first checkpoint, "
                            f"so there is nothing to resume; start it again with --save {resume} (the folder is "
                            "reused)")
        raise UserError(f"--resume {resume}: no {CHECKPOINT} there; pass a {what} run folder or its {CHECKPOINT}")
    return path


def _has_flag(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def flag_value(argv: Sequence[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``argv`` (last one wins, as with argparse), else None."""
    value = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def _check_same_command(config_cls: type[RunConfig], saved: Path, resume: str, prog: str) -> None:
    """Refuse (one line) a run folder that another command started: its config.yaml has options
    this command does not know, or lacks every option this command adds to the one it extends
    (``darts/train_search.py`` on a ``train_search.py`` run and the reverse)."""
    try:
        data = load_yaml(read_text_limited(saved, "config file"))
    except yaml.YAMLError:
        return  # reported with its line number by resolve_config
    if not isinstance(data, dict):
        return
    names = {f.name for f in dataclasses.fields(config_cls)}
    extra = sorted(str(k) for k in data if k not in names)
    own: set[str] = set()
    for base in config_cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            own = names - {f.name for f in dataclasses.fields(base)}
            break
    lacking = sorted(own) if own and not own & set(data) else []
    if extra or lacking:
        why = (f"its config.yaml has options {prog} does not know ({', '.join(extra[:4])})" if extra
               else f"its config.yaml has none of {prog}'s own options ({', '.join(lacking[:4])})")
        raise UserError(f"--resume {resume}: this run was started by another command ({why}); resume it with the "
                        "command that started it")


def resume_config(config_cls: type[C], resume: str, argv: Sequence[str], overridable: frozenset[str] | set[str],
                  prog: str, description: str, what: str) -> tuple[C, Path]:
    """(the saved config with the harmless overrides of ``argv``, the checkpoint to load)."""
    ckpt = checkpoint_path(resume, what)
    saved = ckpt.parent / "config.yaml"
    if not saved.is_file():
        raise UserError(f"--resume {resume}: {saved} is missing; cannot tell how the run was configured")
    if _has_flag(argv, "--config"):
        raise UserError("--config cannot be combined with --resume: the run's saved config.yaml is used")
    _check_same_command(config_cls, saved, resume, prog)
    resumed = resolve_config(config_cls, ["--config", str(saved), *argv], prog, description)
    base = resolve_config(config_cls, ["--config", str(saved)], prog, description)
    changed = sorted(f.name for f in dataclasses.fields(config_cls)
                     if getattr(resumed, f.name) != getattr(base, f.name) and f.name not in overridable)
    if changed:
        raise UserError(f"--resume keeps the run's config; these flags would change the {what}: "
                        f"{', '.join('--' + c for c in changed)} (allowed: "
                        f"{', '.join('--' + c for c in sorted(set(overridable) - {'resume'}))})")
    return dataclasses.replace(resumed, save=str(ckpt.parent)), ckpt


def _on_main(fn: Callable[[], T], dist: DistContext) -> T | None:
    """``fn()`` on the main rank; a UserError there is raised on every rank (the others would
    otherwise wait for it in their first collective)."""
    result, error = None, None
    if dist.is_main:
        try:
            result = fn()
        except UserError as exc:
            error = exc
    message = broadcast_object(str(error) if error else None) if dist.is_distributed else None
    if error is not None:
        raise error
    if message:
        raise UserError(message)
    return result


@contextlib.contextmanager
def open_run(cfg: C, kind: str, ckpt: Path | None, dist: DistContext,
             inputs: Sequence[tuple[str, str | None]] = ()) -> Iterator[tuple[C, Path, logging.Logger]]:
    """(config with ``save`` filled in, run folder, logger), the folder locked until the block ends.

    Without ``--save`` the folder is ``runs/<kind>-<timestamp>``, named by rank 0 so that every
    rank agrees; only rank 0 writes. Call it once the inputs are validated (nothing is written
    before); ``inputs`` are the ``(flag, path)`` files the run reads, which a fresh run refuses
    to find inside the folder it writes. ``config.yaml`` is written by :func:`write_run_config`
    once a resumed checkpoint has loaded.
    """
    save = cfg.save or broadcast_object(default_run_name(kind) if dist.is_main else None)
    cfg = dataclasses.replace(cfg, save=str(save))
    folder = Path(str(save))
    resuming = ckpt is not None
    flag = "--resume" if resuming else "--save"

    def claim() -> tuple[Path, RunLock | None, str | None]:
        if not resuming:
            for in_flag, p in inputs:
                if p is not None and Path(p).exists() and _inside(Path(p), folder):
                    raise UserError(f"{in_flag} {p} lies in the run folder {folder}, which this run writes; copy it "
                                    "elsewhere first")
        return claim_run_dir(folder, resume=resuming, is_main=True, flag=flag)

    claimed = _on_main(claim, dist)
    run_dir, lock, note = claimed if claimed is not None else (folder, None, None)
    try:
        logger = setup_logger(run_dir, dist.is_main)
        if note:
            logger.info("note: %s", note)
        yield cfg, run_dir, logger
    finally:
        if lock is not None:
            lock.release()


def _inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return False
    return True


def write_run_config(cfg: RunConfig, run_dir: Path, dist: DistContext) -> None:
    """``run_dir/config.yaml``: what ``--resume`` reloads; written once the run is validated."""
    if dist.is_main:
        save_config(dataclasses.replace(cfg, resume=None), run_dir / "config.yaml")
