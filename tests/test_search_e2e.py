"""End to end on real images: a short Fair DARTS search on a Fashion-MNIST subset."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fairdarts
from fairdarts.search.cli import main
from fairdarts.search.derive_cli import main as derive_main

FASHION = Path("/usr/share/datasets/fashion-mnist")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.e2e
def test_fashion_mnist_search_writes_a_buildable_genotype(tmp_path, capsys):
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found in {FASHION}")
    run = tmp_path / "run"
    assert main(["--dataset", "fashion_mnist", "--data", str(FASHION), "--subset", "256", "--epochs", "2",
                 "--init_channels", "4", "--layers", "3", "--batch_size", "32", "--image_size", "16",
                 "--device", "cpu", "--parse_method", "darts", "--save", str(run)]) == 0

    for name in ["log.txt", "config.yaml", "genotype.json", "genotype.txt", "normal_weight.npy", "reduce_weight.npy",
                 "alpha_history.npz", "checkpoint.pt", "genotypes/epoch_001.json", "genotypes/epoch_001.txt",
                 "plots/alpha_normal.png", "plots/alpha_reduce.png"]:
        assert (run / name).is_file(), name
    assert list(run.glob("events.out.tfevents*")) or list(run.rglob("*tfevents*"))
    log = (run / "log.txt").read_text()
    assert "valid_acc" in log and "epoch 1 genotype Genotype(" in log

    # The searched genotype builds a network that runs on Fashion-MNIST shaped input.
    g = fairdarts.get_genotype(run)
    assert len(g.normal) == 8 and len(g.reduce) == 8
    net = fairdarts.build_network(run, init_channels=8, layers=5, in_channels=1, image_size=16).eval()
    logits, _ = net(torch.zeros(2, 1, 16, 16))
    assert logits.shape == (2, 10)

    # Gates moved away from their 0.5 start; the Fair DARTS parse of the same run also works.
    gates = np.load(run / "alpha_history.npz")["gated_normal"]
    assert np.abs(gates[-1] - 0.5).max() > 1e-3
    capsys.readouterr()
    assert derive_main([str(run), "--parse_method", "threshold_edge", "--op_threshold", "0.5"]) == 0
    assert capsys.readouterr().out.startswith("Genotype(normal=[")
