"""``python train.py`` (``fairdarts-train``): retrain a genotype from scratch (CIFAR defaults;
ImageNet with --dataset imagenet).

Every flag is a field of :class:`fairdarts.train.config.TrainConfig` (official names);
``--config FILE`` loads a YAML preset that flags override. ``--batch_size`` is the global batch:
under ``torchrun --nproc_per_node N`` each rank takes 1/N of it. ``--resume RUN`` reloads the
run's saved ``config.yaml``; only flags that do not change what is computed (``--epochs`` to
extend the run, ``--device``, ``--workers``, ``--report_freq``, ``--data``, ``--download``,
``--progress``, ``--threads``) may be given with it. The command flow is
:func:`fairdarts.runner.run_command`'s.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from fairdarts.data import image_size_of
from fairdarts.distributed import DistContext
from fairdarts.errors import run_cli
from fairdarts.run_config import RESUME_OVERRIDABLE
from fairdarts.runner import Builder, Command, run_command
from fairdarts.search_space import Genotype, MobileGenotype
from fairdarts.search_space.memory import check_training_memory
from fairdarts.train.config import TrainConfig
from fairdarts.train.trainer import Trainer, build_data, resolve_arch

DESCRIPTION = "Retrain a searched genotype from scratch (official DARTS / Fair DARTS settings)"


def _start(cfg: TrainConfig, genotype: Genotype | MobileGenotype, dist: DistContext) -> Builder:
    """The memory check, the data (missing data and an --accum_steps the batch cannot take fail
    here), then the trainer's builder."""
    check_training_memory(genotype, dist.per_rank_batch(cfg.batch_size), image_size_of(cfg.dataset, cfg.image_size),
                          dist.device, cfg.init_channels, cfg.layers, cfg.width_mult, imagenet=cfg.family == "imagenet")
    data = build_data(cfg, dist)

    def build(cfg: TrainConfig, run_dir: Path, logger: logging.Logger) -> Trainer:
        trainer = Trainer(cfg, genotype, run_dir, dist, logger, data)
        logger.info("genotype: %s", trainer.genotype.to_text())
        logger.info("network: %s, %.3fM parameters (auxiliary head included)", trainer.meta,
                    sum(p.numel() for p in trainer.net.parameters()) / 1e6)
        return trainer
    return build


def _inputs(cfg: TrainConfig) -> list[tuple[str, str | None]]:
    return [("--arch", cfg.arch)]


COMMAND = Command(TrainConfig, "train", DESCRIPTION, "train", "training", RESUME_OVERRIDABLE, _start,
                  resolve=TrainConfig.resolved, prepare=resolve_arch, inputs=_inputs)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(COMMAND, argv)


if __name__ == "__main__":
    run_cli(main)
