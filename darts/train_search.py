"""Original DARTS through the shared search, with the Fair DARTS paper's ablations.

    python darts/train_search.py                          # DARTS, first order, softmax over 8 ops
    python darts/train_search.py --unrolled               # second order
    python darts/train_search.py --noise_darts --noise_type N --noise_scheduler cosine --max_step 30
    python darts/train_search.py --reweight               # genotype as [op, from, weight]
    python darts/train_search.py --random_search --num_identity 2 --num_arch 8 --flops_threshold 500

Every flag of ``train_search.py`` works here too (same names, same meaning); only the
defaults are the DARTS ones. Also ``python -m darts.train_search``.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # `python darts/train_search.py`: make the repository importable
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]  # not darts/ itself
    sys.path.insert(0, str(here.parent))

from fairdarts.config import resolve_config  # noqa: E402
from fairdarts.errors import run_cli  # noqa: E402
from fairdarts.search import cli as search_cli  # noqa: E402
from fairdarts.threads import set_threads  # noqa: E402

from darts.config import DartsSearchConfig  # noqa: E402
from darts.searcher import DartsSearcher  # noqa: E402

PROG = "darts/train_search.py"
DESCRIPTION = ("DARTS architecture search (softmax over 8 ops) with the Fair DARTS ablations: "
               "--noise_darts, --random_search, --reweight")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = resolve_config(DartsSearchConfig, argv, PROG, DESCRIPTION)
    if cfg.random_search:
        from darts.random_search import run_random_search
        return run_random_search(dataclasses.replace(cfg, threads=set_threads(cfg.threads)))
    return search_cli.main(argv, config_cls=DartsSearchConfig, searcher_cls=DartsSearcher, prog=PROG,
                           description=DESCRIPTION)


if __name__ == "__main__":
    run_cli(main)
