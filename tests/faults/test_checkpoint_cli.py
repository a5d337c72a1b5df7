"""Damaged checkpoints through the command lines: one line, exit 2, never a hang.

The field-by-field fuzz runs in-process (tests/test_checkpoint_schema.py); these cases prove the
command-line path, the hang cases with the launcher's timeout as a guard (no timing is checked):
a checkpoint saying ``epoch = 10**9`` once made ``--resume`` replay 10**9 schedule steps.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from fairdarts.checkpoint import load_checkpoint

from .harness import COUNTS, Launcher, assert_one_line_error, sha256
from .runs import EPOCHS, FAIR_DARTS, RETRAIN, Kind, ReferenceRuns

pytestmark = pytest.mark.faults
GUARD = 600.0  # seconds: only a hang comes near it


def poisoned(reference: ReferenceRuns, kind: Kind, work: Path, field: str, value: Any) -> Path:
    """A copy of ``kind``'s finished run whose checkpoint has ``field`` (``a.b``) set to ``value``."""
    run = work / "run"
    shutil.copytree(reference(kind)[0], run)
    state = load_checkpoint(run / "checkpoint.pt")
    *parents, last = field.split(".")
    node = state
    for key in parents:
        node = node[key]
    node[last] = value(node[last]) if callable(value) else value
    torch.save(state, run / "checkpoint.pt")
    return run


@pytest.mark.parametrize("kind", [FAIR_DARTS, RETRAIN], ids=lambda k: k.name)
@pytest.mark.parametrize("epoch", [10**9, -5])
def test_an_epoch_out_of_range_fails_at_once(launcher: Launcher, reference: ReferenceRuns, work: Path, kind: Kind,
                                             epoch: int) -> None:
    run = poisoned(reference, kind, work, "epoch", epoch)
    before = sha256(run / "checkpoint.pt")
    line = assert_one_line_error(launcher.run(kind.entry, ["--resume", str(run)], timeout=GUARD))
    assert f"field 'epoch' must be an integer in 0..{EPOCHS} (the run's --epochs), got {epoch}" in line, line
    assert sha256(run / "checkpoint.pt") == before
    COUNTS["damaged checkpoints refused"] += 1


def _nan_first(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    weights = {k: v.clone() for k, v in weights.items()}
    next(v for v in weights.values() if v.is_floating_point()).view(-1)[0] = math.nan
    return weights


def test_nan_weights_are_refused_at_resume(launcher: Launcher, reference: ReferenceRuns, work: Path) -> None:
    run = poisoned(reference, RETRAIN, work, "state_dict", _nan_first)
    line = assert_one_line_error(launcher.run("train.py", ["--resume", str(run), "--epochs", str(EPOCHS + 1)],
                                              timeout=GUARD))
    assert "field 'state_dict' holds NaN or infinite values in 1 entries" in line, line
    COUNTS["damaged checkpoints refused"] += 1


@pytest.mark.parametrize("field,value", [("network.image_size", 10**6), ("network.init_channels", 10**9),
                                         ("network.layers", -4), ("network.num_classes", "ten")])
def test_evaluate_refuses_a_hostile_network_record(launcher: Launcher, reference: ReferenceRuns, work: Path,
                                                   field: str, value: Any) -> None:
    best = load_checkpoint(reference(RETRAIN)[0] / "model_best.pt")
    best["network"][field.split(".")[1]] = value
    torch.save(best, work / "m.pt")
    line = assert_one_line_error(launcher.run("evaluate.py", ["--model_path", str(work / "m.pt"), "--dataset",
                                                              "synthetic", "--subset", "8"], timeout=GUARD))
    assert f"field '{field}' must be" in line, line
    COUNTS["damaged checkpoints refused"] += 1
