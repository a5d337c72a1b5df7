"""Original DARTS through the shared search, with the Fair DARTS paper's ablations.

    python darts/train_search.py                          # DARTS, first order, softmax over 8 ops
    python darts/train_search.py --unrolled               # second order
    python darts/train_search.py --noise_darts --noise_type N --noise_scheduler cosine --max_step 30
    python darts/train_search.py --reweight               # genotype as [op, from, weight]
    python darts/train_search.py --random_search --num_identity 2 --num_arch 8 --flops_threshold 500

Every flag of ``train_search.py`` works here too (same names, same meaning); only the
defaults are the DARTS ones. The code is :mod:`fairdarts.ablations` (``darts/`` holds only the
command scripts and is no package, so it never shadows PyPI's ``darts``).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fairdarts, as for ../train_search.py

from fairdarts.ablations.cli import main  # noqa: E402
from fairdarts.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(main)
