"""One writer per run folder, dead folders reused, ``model_best.pt`` never stale.

* Two runs into one folder: while a run holds its folder (paused at start-up, in the fork
  server), a second one started with the same ``--save`` or ``--resume`` (a fresh interpreter)
  exits with one line naming the holder's PID and writes nothing there.
* A run SIGKILLed before its first checkpoint leaves a folder that ``--save`` takes again.
* A SIGKILL between ``checkpoint.pt`` and ``model_best.pt`` leaves the old best weights; the
  resume rewrites them from the checkpoint, which carries the best weights.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fairdarts.checkpoint import load_checkpoint

from .harness import COUNTS, REPO, Launcher, assert_one_line_error, max_state_diff, run_fresh, tree_hashes
from .runs import EPOCHS, FAIR_DARTS, RETRAIN, ReferenceRuns

pytestmark = pytest.mark.faults


def test_two_fresh_runs_into_one_folder(launcher: Launcher, work: Path) -> None:
    run = work / "run"
    first = launcher.start(FAIR_DARTS.entry, FAIR_DARTS.argv(run, 1), {"pause_at": ["startup", 1]})
    assert first.wait_for("FAULT-PAUSED startup 1")
    before = tree_hashes(run)
    second = run_fresh(FAIR_DARTS.entry, FAIR_DARTS.argv(run, 1), REPO)
    line = assert_one_line_error(second)
    assert f"in use by another run (PID {first.pid})" in line, line
    assert tree_hashes(run) == before, "the second run wrote into the folder"
    assert first.kill().rc == -9  # dies before its first checkpoint: config.yaml, log.txt, tensorboard/ stay
    assert not (run / "checkpoint.pt").exists() and (run / "config.yaml").is_file()
    third = launcher.run(FAIR_DARTS.entry, FAIR_DARTS.argv(run, 1))
    assert third.rc == 0, third.stderr
    assert "reusing run folder" in third.stdout and f"lock of PID {first.pid}" in third.stdout
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    COUNTS["second writers refused"] += 1
    COUNTS["dead run folders reused"] += 1


def test_two_resumes_of_one_folder(launcher: Launcher, reference: ReferenceRuns, work: Path) -> None:
    run = work / "run"
    shutil.copytree(reference(RETRAIN)[0], run)
    extend = ["--resume", str(run), "--epochs", str(EPOCHS + 1)]
    first = launcher.start(RETRAIN.entry, extend, {"pause_at": ["startup", 1]})
    assert first.wait_for("FAULT-PAUSED startup 1")
    log = (run / "log.txt").read_text()
    second = run_fresh(RETRAIN.entry, extend, REPO)
    line = assert_one_line_error(second)
    assert f"in use by another run (PID {first.pid})" in line, line
    assert (run / "log.txt").read_text() == log, "the second run wrote into the log"
    first.kill()
    result = launcher.run(RETRAIN.entry, extend)
    assert result.rc == 0, result.stderr
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == EPOCHS + 1
    COUNTS["second writers refused"] += 1


def test_kill_between_checkpoint_and_model_best(launcher: Launcher, reference: ReferenceRuns, work: Path) -> None:
    finished = reference(RETRAIN)[0]
    best_epoch = load_checkpoint(finished / "checkpoint.pt")["best"]["epoch"]
    run = work / "run"
    proc = launcher.start(RETRAIN.entry, RETRAIN.argv(run), {"pause_best_at": best_epoch})
    assert proc.wait_for(f"FAULT-PAUSED best {best_epoch}")
    assert proc.kill().rc == -9
    assert load_checkpoint(run / "checkpoint.pt")["best"]["epoch"] == best_epoch
    stale = load_checkpoint(run / "model_best.pt")["epoch"] if (run / "model_best.pt").exists() else None
    assert stale is None or stale < best_epoch  # the previous best, or none yet
    result = launcher.run(RETRAIN.entry, ["--resume", str(run)])
    assert result.rc == 0, result.stderr
    assert "model_best.pt repaired" in result.stdout
    best, ref_best = load_checkpoint(run / "model_best.pt"), load_checkpoint(finished / "model_best.pt")
    assert best["epoch"] == ref_best["epoch"] == best_epoch
    assert best["best_acc_top1"] == pytest.approx(ref_best["best_acc_top1"])
    assert max_state_diff(best["state_dict"], ref_best["state_dict"]) <= 1e-6
    COUNTS["kills between checkpoint.pt and model_best.pt repaired"] += 1
