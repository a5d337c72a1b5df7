"""SIGKILL a search or a retraining at many seeded moments, resume it each time, and get the
same final weights, alphas and genotype as a run that was never interrupted.

Every kill lands at a named fault point (``wrapper.py``), never after a timer: mid-step,
mid-validation, mid-checkpoint-write (half of the temporary file written), right after a
checkpoint (in a retraining, between ``checkpoint.pt`` and ``model_best.pt``) and at start-up
(folder locked, ``config.yaml`` written). Each planned point lies within the work the process
still has to do, so every attempt lands a kill at any machine load. The first process is
killed at start-up, before its first checkpoint: the folder it leaves is started again with the
same ``--save`` (a dead folder is reused, the dead process's lock taken over). After every kill
``checkpoint.pt``, when there is one, must load, and ``model_best.pt`` must hold the best epoch
that the checkpoint records once the run is resumed.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from fairdarts.checkpoint import load_checkpoint

from .harness import COUNTS, Launcher, Result, max_state_diff
from .runs import EPOCHS, KINDS, STEPS, Kind, ReferenceRuns

pytestmark = pytest.mark.faults

KILLS = 11  # per entry point and configuration: at least 10 each CI run
POINTS = ("after_checkpoint", "step", "validation", "checkpoint", "startup")


def plan(rng: random.Random, attempt: int, epochs_done: int) -> tuple[str, int]:
    """A kill point within what a process resumed after ``epochs_done`` epochs still runs; the
    points take turns, so that each is covered in every run.

    Mostly within the process's first epoch, so that a dozen kills spread over a three-epoch
    run; ``after_checkpoint`` comes first, while an epoch is still left after the one it
    completes, and a kill that would complete the last checkpoint is moved before it (mid-write),
    so that the run never finishes under the kills.
    """
    point = POINTS[attempt % len(POINTS)]
    if point == "startup":
        return point, 1
    left = EPOCHS - epochs_done
    epoch = 2 if left >= 2 and rng.random() >= 0.75 and point != "after_checkpoint" else 1
    if point == "after_checkpoint" and epoch == left:
        point = "checkpoint"
    if point == "step":
        return point, rng.randint(STEPS * (epoch - 1) + 1, STEPS * epoch)
    return point, epoch


def checkpoint_epoch(run: Path) -> int:
    """Epochs done by the run's checkpoint; it must load whenever it exists."""
    path = run / "checkpoint.pt"
    return int(load_checkpoint(path)["epoch"]) if path.exists() else 0


def kill_at(launcher: Launcher, kind: Kind, run: Path, point: str, n: int, fresh: bool) -> Result:
    """Start (``fresh``: with ``--save``) or resume the run, wait for the point, SIGKILL it there."""
    argv = kind.argv(run) if fresh else ["--resume", str(run)]
    proc = launcher.start(kind.entry, argv, {"pause_at": [point, n]})
    assert proc.wait_for(f"FAULT-PAUSED {point} {n}"), f"the run ended before {point} {n}: {proc.wait().stderr}"
    return proc.kill()


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(launcher: Launcher, reference: ReferenceRuns,
                                                             work: Path, kind: Kind) -> None:
    finished, _ = reference(kind)
    rng = random.Random(f"kills-{kind.name}")
    run = work / "killed"
    # a fresh start killed before its first checkpoint, then a fresh start in the same folder
    for attempt, (point, n) in enumerate((("startup", 1), ("step", STEPS + 1))):
        assert kill_at(launcher, kind, run, point, n, fresh=True).rc == -9
        COUNTS[f"kills survived ({kind.name}, {'dead folder' if attempt == 0 else point})"] += 1
    assert checkpoint_epoch(run) == 1
    kills = 2
    for attempt in range(KILLS - kills):
        point, n = plan(rng, attempt, checkpoint_epoch(run))
        result = kill_at(launcher, kind, run, point, n, fresh=False)
        assert result.rc == -9, f"{point} {n}: exit {result.rc}\n{result.stderr}"
        kills += 1
        COUNTS[f"kills survived ({kind.name}, {point})"] += 1
        assert checkpoint_epoch(run) < EPOCHS  # loads, or raises: never a half-written checkpoint
    result = launcher.run(kind.entry, ["--resume", str(run)])
    assert result.rc == 0 and checkpoint_epoch(run) == EPOCHS, result.stderr
    assert kills >= 10
    weights, genotype = kind.final(run)
    ref_weights, ref_genotype = kind.final(finished)
    assert max_state_diff(weights, ref_weights) <= 1e-6
    assert genotype == ref_genotype
    if kind.entry == "train.py":  # model_best.pt: the reference's best epoch and weights
        best, ref_best = load_checkpoint(run / "model_best.pt"), load_checkpoint(finished / "model_best.pt")
        assert best["epoch"] == ref_best["epoch"] == load_checkpoint(run / "checkpoint.pt")["best"]["epoch"]
        assert max_state_diff(best["state_dict"], ref_best["state_dict"]) <= 1e-6
