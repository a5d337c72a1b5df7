"""The random-search baseline of the DARTS ablations: ``darts/train_search.py --random_search``.

    python darts/random_search.py --num_identity 2 --num_arch 8 --flops_threshold 500
    python darts/random_search.py --num_arch 4 --train_random_epochs 10 --dataset cifar10

Random alphas -> DARTS genotypes, kept when the normal cell has ``--num_identity`` skip
connections and the 36-channel, 20-layer network reaches ``--flops_threshold`` MFLOPs
(counted analytically); ``--train_random_epochs N`` trains and ranks the kept ones.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fairdarts, as for ../train_search.py

from fairdarts.ablations.cli import random_search_main  # noqa: E402
from fairdarts.errors import run_cli  # noqa: E402

if __name__ == "__main__":
    run_cli(random_search_main)
