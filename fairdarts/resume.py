"""Starting or resuming a run, shared by the search and the retraining.

``--resume RUN_DIR_OR_CKPT`` finds the checkpoint and rebuilds the run's saved config: a
resumed run keeps the config it was started with (its ``config.yaml``); only flags that cannot
change the result (``--epochs`` to extend a run, ``--device``, logging, ...) may be given again.
:func:`open_run` makes (or reopens) the run folder, its log and its ``config.yaml``.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence, TypeVar

from fairdarts.config import resolve_config, save_config
from fairdarts.distributed import DistContext, broadcast_object
from fairdarts.errors import UserError
from fairdarts.run_dir import default_run_name, prepare_run_dir, setup_logger

CHECKPOINT = "checkpoint.pt"
C = TypeVar("C")


def checkpoint_path(resume: str, what: str) -> Path:
    """``--resume`` takes a run folder or its checkpoint file; ``what`` names the kind of run."""
    path = Path(resume)
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"--resume {resume}: no {CHECKPOINT} there; pass a {what} run folder or its {CHECKPOINT}")
    return path


def _has_flag(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def resume_config(config_cls: type[C], resume: str, argv: Sequence[str], overridable: frozenset[str] | set[str],
                  prog: str, description: str, what: str) -> tuple[C, Path]:
    """(the saved config with the harmless overrides of ``argv``, the checkpoint to load)."""
    ckpt = checkpoint_path(resume, what)
    saved = ckpt.parent / "config.yaml"
    if not saved.is_file():
        raise UserError(f"--resume {resume}: {saved} is missing; cannot tell how the run was configured")
    if _has_flag(argv, "--config"):
        raise UserError("--config cannot be combined with --resume: the run's saved config.yaml is used")
    resumed = resolve_config(config_cls, ["--config", str(saved), *argv], prog, description)
    base = resolve_config(config_cls, ["--config", str(saved)], prog, description)
    changed = sorted(f.name for f in dataclasses.fields(config_cls)  # type: ignore[arg-type]
                     if getattr(resumed, f.name) != getattr(base, f.name) and f.name not in overridable)
    if changed:
        raise UserError(f"--resume keeps the run's config; these flags would change the {what}: "
                        f"{', '.join('--' + c for c in changed)} (allowed: "
                        f"{', '.join('--' + c for c in sorted(set(overridable) - {'resume'}))})")
    return dataclasses.replace(resumed, save=str(ckpt.parent)), ckpt  # type: ignore[type-var]


def open_run(cfg: C, kind: str, resuming: bool, dist: DistContext) -> tuple[C, Path, logging.Logger]:
    """(config with ``save`` filled in, run folder, logger). Without ``--save`` the folder is
    ``runs/<kind>-<timestamp>``, named by rank 0 so that every rank agrees; only rank 0 writes."""
    save = cfg.save or broadcast_object(default_run_name(kind) if dist.is_main else None)  # type: ignore[attr-defined]
    cfg = dataclasses.replace(cfg, save=str(save))  # type: ignore[type-var]
    run_dir = prepare_run_dir(cfg.save, resume=resuming, is_main=dist.is_main)  # type: ignore[attr-defined]
    logger = setup_logger(run_dir, dist.is_main)
    if dist.is_main:
        save_config(dataclasses.replace(cfg, resume=None), run_dir / "config.yaml")  # type: ignore[type-var]
    return cfg, run_dir, logger
