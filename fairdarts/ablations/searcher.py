"""The search loop of :mod:`fairdarts.search` with the DARTS ablations switched in.

:class:`DartsSearcher` is :class:`fairdarts.search.searcher.Searcher` plus two hooks:

* ``--noise_darts``: after the supernet is built, every stride-1 skip op becomes a
  :class:`fairdarts.ablations.noise.NoisySkip`; at the start of every epoch its scale is set to
  ``noise_scale(epoch, max_step, noise_scheduler)``. The noise draws come from torch's global
  RNG, which the search checkpoint captures, so a resumed run is the uninterrupted run.
* ``--reweight``: the derived genotype is written as ``[op, from, weight]`` with the gate weights.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from fairdarts.ablations.config import DartsSearchConfig
from fairdarts.ablations.noise import add_skip_noise, noise_scale, set_noise_scale
from fairdarts.ablations.reweight import reweight_genotype
from fairdarts.distributed import DistContext
from fairdarts.errors import counted
from fairdarts.search.loop import EpochStats
from fairdarts.search.searcher import SearchData, Searcher
from fairdarts.search_space import Genotype


class DartsSearcher(Searcher):
    """The shared searcher with the ``--noise_darts`` and ``--reweight`` hooks (see the module doc)."""

    def __init__(self, cfg: DartsSearchConfig, run_dir: Path, dist: DistContext, logger: logging.Logger,
                 data: SearchData | None = None) -> None:
        super().__init__(cfg, run_dir, dist, logger, data)
        self.noisy_skips = add_skip_noise(self.model, cfg.noise_type) if cfg.noise_darts else []
        if cfg.noise_darts:
            self.log.info("noise (%s, %s over %s) on %d stride-1 skip connections", cfg.noise_type,
                          cfg.noise_scheduler, counted(cfg.max_step, "epoch"), len(self.noisy_skips))

    def train_one_epoch(self, epoch: int, lr: float) -> EpochStats:
        """Set this epoch's noise scale first: the scale depends on the epoch only, so a resumed run
        picks it up without storing it."""
        if self.noisy_skips:
            scale = noise_scale(epoch, self.cfg.max_step, self.cfg.noise_scheduler)
            set_noise_scale(self.noisy_skips, scale)
            self.log.info("epoch %d noise scale %.4f", epoch, scale)
        return super().train_one_epoch(epoch, lr)

    def genotype_of(self, gates: Sequence[np.ndarray]) -> Genotype:
        """With ``--reweight``, the DARTS genotype in the ``[op, from, weight]`` form."""
        if not self.cfg.reweight:
            return super().genotype_of(gates)
        normal, reduce = gates
        return reweight_genotype(normal, reduce, self.primitives)
