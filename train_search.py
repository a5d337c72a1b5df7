"""Architecture search: Fair DARTS by default, DARTS with --gate softmax --primitives darts.

    python train_search.py --aux_loss_weight 10 --parse_method threshold_sparse
    python train_search.py --config configs/search_darts_second_order.yaml
"""
from fairdarts.errors import run_cli
from fairdarts.search.cli import main

if __name__ == "__main__":
    run_cli(main)
