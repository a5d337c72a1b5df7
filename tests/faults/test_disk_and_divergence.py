"""A full disk while writing a checkpoint, and a loss that turns into NaN.

Each test copies a finished tiny run and resumes it for one more epoch with the fault. A full
disk and a diverging loss must stop the run with one clear line (exit non-zero, no traceback)
and leave the last good checkpoint as it was; ``--skip_nonfinite`` instead skips the poisoned
step and finishes the epoch with finite weights.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from fairdarts.checkpoint import load_checkpoint

from .harness import COUNTS, Launcher, Result, assert_one_line_error, sha256
from .runs import EPOCHS, FAIR_DARTS, KINDS, RETRAIN, Kind, ReferenceRuns

pytestmark = pytest.mark.faults


def extend(launcher: Launcher, finished: Path, work: Path, kind: Kind, spec: dict,
           *flags: str) -> tuple[Path, str, Result]:
    """Resume a copy of ``finished`` for one more epoch with the fault ``spec``: (run, sha before, result)."""
    run = work / "run"
    shutil.copytree(finished, run)
    before = sha256(run / "checkpoint.pt")
    return run, before, launcher.run(kind.entry, ["--resume", str(run), "--epochs", str(EPOCHS + 1), *flags], spec)


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


@pytest.mark.parametrize("kind", [FAIR_DARTS, RETRAIN], ids=lambda k: k.name)
def test_full_disk_keeps_the_previous_checkpoint(launcher: Launcher, reference: ReferenceRuns, work: Path,
                                                 kind: Kind) -> None:
    run, before, result = extend(launcher, reference(kind)[0], work, kind, {"enospc_at": 1})
    line = assert_one_line_error(result)
    assert "No space left on device; its previous version is intact: the run stopped; the run folder keeps " \
           f"checkpoint.pt with {EPOCHS} epochs done" in line, line
    assert result.stdout.count(f"FAULT-ENOSPC {before}") == 1  # the fault struck, with this file on disk
    assert sha256(run / "checkpoint.pt") == before and load_checkpoint(run / "checkpoint.pt")["epoch"] == EPOCHS
    assert not list(run.glob(".checkpoint.pt.tmp-*")), "the partial temporary file was left behind"
    COUNTS["full disks survived"] += 1


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_diverging_loss_stops_with_epoch_and_step(launcher: Launcher, reference: ReferenceRuns, work: Path,
                                                  kind: Kind) -> None:
    run, before, result = extend(launcher, reference(kind)[0], work, kind, {"nonfinite_at": [EPOCHS, 2]})
    line = assert_one_line_error(result)
    assert f"epoch {EPOCHS} step 2: the run stopped; the run folder keeps checkpoint.pt with {EPOCHS} epochs done" \
        in line and "learning_rate" in line, line
    assert sha256(run / "checkpoint.pt") == before
    assert _finite(load_checkpoint(run / "checkpoint.pt")[kind.state_key])
    COUNTS["diverging runs stopped"] += 1


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_skip_nonfinite_skips_the_step_and_finishes(launcher: Launcher, reference: ReferenceRuns, work: Path,
                                                    kind: Kind) -> None:
    run, _, result = extend(launcher, reference(kind)[0], work, kind, {"nonfinite_at": [EPOCHS, 2]}, "--skip_nonfinite")
    assert result.rc == 0, result.stderr
    assert f"epoch {EPOCHS} step 2: non-finite loss, step skipped" in result.stdout
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["epoch"] == EPOCHS + 1 and _finite(state[kind.state_key])
    COUNTS["diverging steps skipped"] += 1
