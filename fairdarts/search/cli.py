"""``python train_search.py``: the Fair DARTS / DARTS search command line.

Every flag is a field of :class:`fairdarts.search.config.SearchConfig` (official names;
``--search_space mobile`` searches S2 through the same loop, see :mod:`fairdarts.search.spaces`);
``--config FILE`` loads a YAML preset that flags override. ``--resume RUN`` reloads the run's
saved ``config.yaml``; only flags that do not change what is computed (``--epochs`` to extend
the run, ``--device``, ``--workers``, ``--report_freq``, ``--data``, ``--download``,
``--progress``, ``--threads``) may be given with it.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

import torch

from fairdarts.config import resolve_config
from fairdarts.cpu_allocator import keep_freed_memory
from fairdarts.distributed import cleanup_distributed, init_distributed
from fairdarts.resume import flag_value, open_run, resume_config, write_run_config
from fairdarts.search.config import RESUME_OVERRIDABLE, SearchConfig
from fairdarts.search.searcher import Searcher, build_data
from fairdarts.threads import set_threads

PROG = "train_search.py"
DESCRIPTION = ("Fair DARTS (default) or DARTS (--gate softmax --primitives darts) architecture search, in the "
               "DARTS cell space or (--search_space mobile) the MobileNetV2-like ImageNet space S2")


def main(argv: Sequence[str] | None = None, config_cls: type[SearchConfig] = SearchConfig,
         searcher_cls: type[Searcher] = Searcher, prog: str = PROG, description: str = DESCRIPTION) -> int:
    """The search command. ``config_cls``/``searcher_cls`` let a variant (the ``darts/`` ablations)
    add flags and behaviour to the same loop instead of copying it."""
    keep_freed_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = resolve_config(config_cls, argv, prog, description)
    ckpt = None
    if cfg.resume:
        cfg, ckpt = resume_config(config_cls, cfg.resume, argv, RESUME_OVERRIDABLE, prog, description, "search")
    threads = set_threads(cfg.threads)
    if ckpt is None:  # a new run records the count; a resumed one keeps its config.yaml (and --threads typed)
        cfg = dataclasses.replace(cfg, threads=threads)
    dist = init_distributed(cfg.device)
    try:
        data = build_data(cfg, dist)  # missing data fails here, before a run folder is created
        inputs = [("--config", flag_value(argv, "--config"))]
        with open_run(cfg, "search", ckpt, dist, inputs) as (cfg, run_dir, logger):
            if cfg.aux_loss_weight and cfg.gate == "softmax":
                logger.info("note: the zero-one loss is defined on sigmoid gates; --aux_loss_weight %s is not used "
                            "with --gate softmax", cfg.aux_loss_weight)
            logger.info("search config: %s", dataclasses.asdict(cfg))
            logger.info("intra-op CPU threads: %d (--threads)", torch.get_num_threads())
            searcher = searcher_cls(cfg, run_dir, dist, logger, data)
            if ckpt is not None:
                searcher.resume(ckpt)
            write_run_config(cfg, run_dir, dist)  # after the checkpoint loaded: a failed resume keeps the old file
            searcher.run()
            logger.info("run folder: %s", run_dir)
    finally:
        cleanup_distributed()
    return 0
