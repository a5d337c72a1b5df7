"""``python train_search.py`` (``fairdarts-search``): the Fair DARTS / DARTS search command line.

Every flag is a field of :class:`fairdarts.search.config.SearchConfig` (official names;
``--search_space mobile`` searches S2 through the same loop, see :mod:`fairdarts.search.spaces`);
``--config FILE`` loads a YAML preset that flags override. ``--resume RUN`` reloads the run's
saved ``config.yaml``; only flags that do not change what is computed (``--epochs`` to extend
the run, ``--device``, ``--workers``, ``--report_freq``, ``--data``, ``--download``,
``--progress``, ``--threads``, ``--plot_every``, and the collapse instrument's ``--hessian_*`` and
``--early_stop_*``) may be given with it. The command flow is
:func:`fairdarts.runner.run_command`'s.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from fairdarts.data import image_size_of
from fairdarts.distributed import DistContext
from fairdarts.errors import run_cli
from fairdarts.runner import Builder, Command, run_command
from fairdarts.search.config import RESUME_OVERRIDABLE, SearchConfig
from fairdarts.search.searcher import Searcher, build_data
from fairdarts.search.spaces import space_of
from fairdarts.search_space.memory import check_training_memory

DESCRIPTION = ("Fair DARTS (default) or DARTS (--gate softmax --primitives darts) architecture search, in the "
               "DARTS cell space or (--search_space mobile) the MobileNetV2-like ImageNet space S2")


def main(argv: Sequence[str] | None = None, config_cls: type[SearchConfig] = SearchConfig,
         searcher_cls: type[Searcher] = Searcher, name: str = "search", description: str = DESCRIPTION) -> int:
    """The search command. ``config_cls``/``searcher_cls`` let a variant (the ``darts/`` ablations)
    add flags and behaviour to the same loop instead of copying it; ``name``: its key in
    :data:`fairdarts.invocation.COMMANDS`."""
    def start(cfg: SearchConfig, _prepared: None, dist: DistContext) -> Builder:
        check_training_memory(space_of(cfg).primitives, dist.per_rank_batch(cfg.batch_size),
                              image_size_of(cfg.dataset, cfg.image_size), dist.device, cfg.init_channels, cfg.layers,
                              cfg.width_mult)
        data = build_data(cfg, dist)

        def build(cfg: SearchConfig, run_dir: Path, logger: logging.Logger) -> Searcher:
            if cfg.aux_loss_weight and cfg.gate == "softmax":
                logger.info("note: the zero-one loss is defined on sigmoid gates; --aux_loss_weight %s is not used "
                            "with --gate softmax", cfg.aux_loss_weight)
            return searcher_cls(cfg, run_dir, dist, logger, data)
        return build

    return run_command(Command(config_cls, name, description, "search", "search", RESUME_OVERRIDABLE, start), argv)


if __name__ == "__main__":
    run_cli(main)
