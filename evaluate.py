"""Evaluate a checkpoint on the test set (FLOPs and params first).

    python evaluate.py --model_path runs/train-XXXX/model_best.pt
    python evaluate.py --model_path best_model/FairDARTS-b.tar
    python evaluate.py --model_path ckpt.tar --arch FairDARTS_a --init_channels 16 --layers 8 --export onnx
"""
from fairdarts.errors import run_cli
from fairdarts.evaluation.cli import main

if __name__ == "__main__":
    run_cli(main)
