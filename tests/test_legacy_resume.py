"""Run folders written by an earlier version still resume, to the very numbers of an unbroken run.

``tests/fixtures/legacy_runs/{search,train}`` are what ``train_search.py`` / ``train.py`` of the
version before the shared run skeleton (fairdarts.runner) left after epoch 1 of 1 (their
``checkpoint.pt``, ``config.yaml``, ``log.txt`` and, for the retraining, ``model_best.pt``)::

    train_search.py --dataset synthetic --image_size 8 --subset 16 --batch_size 4 --init_channels 2
        --layers 3 --primitives max_pool_3x3,skip_connect,sep_conv_3x3 --device cpu --report_freq 1
        --max_steps_per_epoch 2 --threads 1 --no-progress --plot_every 5 --epochs 1
    train.py --arch FairDARTS_a --dataset synthetic --image_size 8 --subset 16 --test_subset 8
        --batch_size 4 --init_channels 4 --layers 3 --no-auxiliary --device cpu --report_freq 1
        --max_steps_per_epoch 2 --threads 1 --no-progress --seed 1 --cutout_length 3
        --drop_path_prob 0.2 --epochs 1

``{search,train}_expected.json`` hold, from the same version, the final alphas / metrics and the
float64 sum of every weight tensor of the same commands run uninterrupted with ``--epochs 2``.
Resuming with ``--epochs 2`` must reproduce them (the epoch-0 schedule and drop path do not
depend on ``--epochs``, and the later ones are replayed with the new value).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fairdarts.search.cli import main as search_main
from fairdarts.train.cli import main as train_main

FIXTURES = Path(__file__).parent / "fixtures" / "legacy_runs"
#: The runs are float32: the same commands on another CPU, or with the native search kernels
#: (which sum in another order), differ from the fixture's machine by ~1e-6 relative after two
#: epochs (measured: 3.8e-6 on the alphas), far below what a resume that replays the schedule,
#: the RNG or the data order wrongly does to the trajectory.
TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


def _resume_copy(kind: str, tmp_path: Path) -> tuple[Path, dict]:
    run = tmp_path / kind
    shutil.copytree(FIXTURES / kind, run)
    expected = json.loads((FIXTURES / f"{kind}_expected.json").read_text())
    return run, expected


def _assert_weight_sums(state: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    sums = {k: float(v.double().sum()) for k, v in state.items() if v.is_floating_point()}
    assert sums.keys() == expected.keys()
    for name, value in expected.items():
        assert sums[name] == pytest.approx(value, rel=TOL, abs=TOL), name


def test_legacy_search_run_resumes_to_the_unbroken_result(tmp_path):
    run, expected = _resume_copy("search", tmp_path)
    assert search_main(["--resume", str(run), "--epochs", "2", "--device", "cpu"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["format"] == "fairdarts-search/1" and state["epoch"] == expected["epoch"] == 2
    for name, values in expected["alphas"].items():
        torch.testing.assert_close(state["model"][name], torch.tensor(values), rtol=TOL, atol=TOL)
    _assert_weight_sums(state["model"], expected["weight_sums"])
    assert state["genotype"] == expected["genotype"]
    assert "resumed from" in (run / "log.txt").read_text()


def test_legacy_train_run_resumes_to_the_unbroken_result(tmp_path):
    run, expected = _resume_copy("train", tmp_path)
    assert train_main(["--resume", str(run), "--epochs", "2", "--device", "cpu"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == expected["epoch"] == 2
    metrics = {k: v for k, v in state["metrics"].items() if k != "seconds"}
    assert metrics == pytest.approx(expected["metrics"], rel=TOL, abs=TOL)
    assert state["best_acc_top1"] == expected["best_acc_top1"]
    _assert_weight_sums(state["state_dict"], expected["weight_sums"])
    best = torch.load(run / "model_best.pt", weights_only=True)
    assert best["epoch"] == 2 and best["best_acc_top1"] == expected["best_acc_top1"]
