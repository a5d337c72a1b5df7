"""``python train.py``: retrain a genotype from scratch (CIFAR defaults; ImageNet with --dataset imagenet).

Every flag is a field of :class:`fairdarts.train.config.TrainConfig` (official names);
``--config FILE`` loads a YAML preset that flags override. ``--batch_size`` is the global batch:
under ``torchrun --nproc_per_node N`` each rank takes 1/N of it. ``--resume RUN`` reloads the
run's saved ``config.yaml``; only flags that do not change what is computed (``--epochs`` to
extend the run, ``--device``, ``--workers``, ``--report_freq``, ``--data``, ``--download``,
``--progress``, ``--threads``) may be given with it.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

import torch

from fairdarts.cpu_allocator import keep_freed_memory
from fairdarts.config import resolve_config
from fairdarts.distributed import cleanup_distributed, init_distributed
from fairdarts.resume import flag_value, open_run, resume_config, write_run_config
from fairdarts.train.config import RESUME_OVERRIDABLE, TrainConfig
from fairdarts.threads import set_threads
from fairdarts.train.trainer import Trainer, build_data, resolve_arch

PROG = "train.py"
DESCRIPTION = "Retrain a searched genotype from scratch (official DARTS / Fair DARTS settings)"


def main(argv: Sequence[str] | None = None) -> int:
    keep_freed_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = resolve_config(TrainConfig, argv, PROG, DESCRIPTION).resolved()
    ckpt = None
    if cfg.resume:
        cfg, ckpt = resume_config(TrainConfig, cfg.resume, argv, RESUME_OVERRIDABLE, PROG, DESCRIPTION, "training")
    threads = set_threads(cfg.threads)
    if ckpt is None:  # a new run records the count; a resumed one keeps its config.yaml (and --threads typed)
        cfg = dataclasses.replace(cfg, threads=threads)
    genotype = resolve_arch(cfg)  # a bad --arch fails before any folder is made
    dist = init_distributed(cfg.device)
    try:
        data = build_data(cfg, dist)  # so does missing data, and an --accum_steps the batch cannot take
        inputs = [("--config", flag_value(argv, "--config")), ("--arch", cfg.arch)]
        with open_run(cfg, "train", ckpt, dist, inputs) as (cfg, run_dir, logger):
            logger.info("train config: %s", dataclasses.asdict(cfg))
            logger.info("intra-op CPU threads: %d (--threads)", torch.get_num_threads())
            trainer = Trainer(cfg, genotype, run_dir, dist, logger, data)
            logger.info("genotype: %s", trainer.genotype.to_text())
            logger.info("network: %s, %.3fM parameters (auxiliary head included)", trainer.meta,
                        sum(p.numel() for p in trainer.net.parameters()) / 1e6)
            if ckpt is not None:
                trainer.resume(ckpt)
            write_run_config(cfg, run_dir, dist)  # after the checkpoint loaded: a failed resume keeps the old file
            trainer.run()
            logger.info("run folder: %s", run_dir)
    finally:
        cleanup_distributed()
    return 0
