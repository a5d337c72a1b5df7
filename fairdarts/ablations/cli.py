"""The command of ``darts/train_search.py`` and ``darts/random_search.py``: original DARTS
through the shared search, with the Fair DARTS paper's ablations.

    python darts/train_search.py                          # DARTS, first order, softmax over 8 ops
    python darts/train_search.py --unrolled               # second order
    python darts/train_search.py --noise_darts --noise_type N --noise_scheduler cosine --max_step 30
    python darts/train_search.py --reweight               # genotype as [op, from, weight]
    python darts/train_search.py --random_search --num_identity 2 --num_arch 8 --flops_threshold 500
    python darts/random_search.py --num_identity 2 --num_arch 8   # the same as --random_search

Every flag of ``train_search.py`` works here too (same names, same meaning); only the
defaults are the DARTS ones. Also ``python -m fairdarts.ablations.cli`` and, installed,
``fairdarts-darts-search`` / ``fairdarts-random-search``.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Sequence

from fairdarts.ablations.config import DartsSearchConfig
from fairdarts.ablations.searcher import DartsSearcher
from fairdarts.config import resolve_config
from fairdarts.errors import run_cli
from fairdarts.invocation import prog
from fairdarts.search import cli as search_cli
from fairdarts.threads import set_threads

DESCRIPTION = ("DARTS architecture search (softmax over 8 ops) with the Fair DARTS ablations: "
               "--noise_darts, --random_search, --reweight")


def main(argv: Sequence[str] | None = None, name: str = "darts-search") -> int:
    """Parse the DARTS options; ``--random_search`` samples genotypes, anything else searches.
    ``name``: the command's key in :data:`fairdarts.invocation.COMMANDS`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = resolve_config(DartsSearchConfig, argv, prog(name), DESCRIPTION)
    if cfg.random_search:
        from fairdarts.ablations.random_search import run_random_search  # the search needs none of it
        return run_random_search(dataclasses.replace(cfg, threads=set_threads(cfg.threads)))
    return search_cli.main(argv, config_cls=DartsSearchConfig, searcher_cls=DartsSearcher, name=name,
                           description=DESCRIPTION)


def random_search_main(argv: Sequence[str] | None = None) -> int:
    """``darts/random_search.py``: ``darts/train_search.py --random_search`` under its own name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(["--random_search", *argv], name="random-search")


if __name__ == "__main__":
    run_cli(main)
