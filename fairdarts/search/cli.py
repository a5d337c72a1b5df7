"""``python train_search.py``: the Fair DARTS / DARTS search command line.

Every flag is a field of :class:`fairdarts.search.config.SearchConfig` (official names);
``--config FILE`` loads a YAML preset that flags override. ``--resume RUN`` reloads the run's
saved ``config.yaml``; only flags that do not change what is computed (``--epochs`` to extend
the run, ``--device``, ``--workers``, ``--report_freq``, ``--data``, ``--download``,
``--progress``) may be given with it.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from fairdarts.config import resolve_config, save_config
from fairdarts.distributed import broadcast_object, cleanup_distributed, init_distributed
from fairdarts.errors import UserError
from fairdarts.run_dir import default_run_name, prepare_run_dir, setup_logger
from fairdarts.search.config import RESUME_OVERRIDABLE, SearchConfig
from fairdarts.search.searcher import Searcher, build_data, checkpoint_path

PROG = "train_search.py"
DESCRIPTION = "Fair DARTS (default) or DARTS (--gate softmax --primitives darts) architecture search"


def _has_flag(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def resume_config(cfg: SearchConfig, argv: Sequence[str], config_cls: type[SearchConfig] = SearchConfig,
                  prog: str = PROG, description: str = DESCRIPTION) -> tuple[SearchConfig, Path, Path]:
    """The saved config of the run being resumed, with the harmless overrides of ``argv``."""
    ckpt = checkpoint_path(cfg.resume)  # type: ignore[arg-type]
    run_dir = ckpt.parent
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise UserError(f"--resume {cfg.resume}: {saved} is missing; cannot tell how the run was configured")
    if _has_flag(argv, "--config"):
        raise UserError("--config cannot be combined with --resume: the run's saved config.yaml is used")
    resumed = resolve_config(config_cls, ["--config", str(saved), *argv], prog, description)
    base = resolve_config(config_cls, ["--config", str(saved)], prog, description)
    changed = sorted(f.name for f in dataclasses.fields(config_cls)
                     if getattr(resumed, f.name) != getattr(base, f.name) and f.name not in RESUME_OVERRIDABLE)
    if changed:
        raise UserError(f"--resume keeps the run's config; these flags would change the search: "
                        f"{', '.join('--' + c for c in changed)} (allowed: "
                        f"{', '.join('--' + c for c in sorted(RESUME_OVERRIDABLE - {'resume'}))})")
    return dataclasses.replace(resumed, save=str(run_dir)), run_dir, ckpt


def main(argv: Sequence[str] | None = None, config_cls: type[SearchConfig] = SearchConfig,
         searcher_cls: type[Searcher] = Searcher, prog: str = PROG, description: str = DESCRIPTION) -> int:
    """The search command. ``config_cls``/``searcher_cls`` let a variant (the ``darts/`` ablations)
    add flags and behaviour to the same loop instead of copying it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = resolve_config(config_cls, argv, prog, description)
    ckpt = None
    if cfg.resume:
        cfg, _, ckpt = resume_config(cfg, argv, config_cls, prog, description)
    dist = init_distributed(cfg.device)
    try:
        data = build_data(cfg, dist)  # missing data fails here, before a run folder is created
        save = cfg.save or broadcast_object(default_run_name("search") if dist.is_main else None)
        cfg = dataclasses.replace(cfg, save=str(save))
        run_dir = prepare_run_dir(cfg.save, resume=ckpt is not None, is_main=dist.is_main)
        logger = setup_logger(run_dir, dist.is_main)
        if dist.is_main:
            save_config(dataclasses.replace(cfg, resume=None), run_dir / "config.yaml")
        if cfg.aux_loss_weight and cfg.gate == "softmax":
            logger.info("note: the zero-one loss is defined on sigmoid gates; --aux_loss_weight %s is not used "
                        "with --gate softmax", cfg.aux_loss_weight)
        logger.info("search config: %s", dataclasses.asdict(cfg))
        searcher = searcher_cls(cfg, run_dir, dist, logger, data)
        if ckpt is not None:
            searcher.resume(ckpt)
        searcher.run()
        logger.info("run folder: %s", run_dir)
    finally:
        cleanup_distributed()
    return 0
