"""End to end on real images: retrain FairDARTS_a (8 channels, 5 cells) on 2000 Fashion-MNIST
training images for 3 epochs, then evaluate.py on 1000 test images: clearly above chance (10%)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.e2e


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} is absent")
def test_fashion_mnist_retrain_then_evaluate(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--arch", "FairDARTS_a", "--dataset", "fashion_mnist",
         "--data", str(FASHION), "--subset", "2000", "--epochs", "3", "--batch_size", "64",
         "--learning_rate", "0.05", "--init_channels", "8", "--layers", "5", "--drop_path_prob", "0.1",
         "--device", "cpu", "--save", str(run), "--report_freq", "1000"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    evaluate = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "--model_path", str(run / "checkpoint.pt"), "--data", str(FASHION),
         "--subset", "1000", "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr[-2000:]
    top1 = float(re.search(r"top-1 ([\d.]+)%", evaluate.stdout).group(1))
    print(evaluate.stdout)
    assert top1 > 50.0, evaluate.stdout
