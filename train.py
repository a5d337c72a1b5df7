"""Retrain a genotype: CIFAR-10 with the official defaults, ImageNet with --dataset imagenet.

    python train.py --arch FairDARTS_a
    python train.py --config configs/train_imagenet.yaml --data /path/to/imagenet
    torchrun --nproc_per_node 8 train.py --arch runs/search-XXXX --amp
"""
from fairdarts.errors import run_cli
from fairdarts.train.cli import main

if __name__ == "__main__":
    run_cli(main)
