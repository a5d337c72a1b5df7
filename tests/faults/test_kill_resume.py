"""SIGKILL a search or a retraining at many seeded moments, resume it each time, and get the
same final weights, alphas and genotype as a run that was never interrupted.

Kills land mid-step, mid-validation, mid-checkpoint-write (the fault point pauses with half of
the temporary file written) and at random times; after every one ``checkpoint.pt``, when there
is one, must load. A run is only ever resumed with ``--resume RUN`` (the run's own config).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from fairdarts.checkpoint import load_checkpoint

from .harness import COUNTS, Launcher, Result, max_state_diff
from .runs import EPOCHS, KINDS, STEPS, Kind, ReferenceRuns

pytestmark = pytest.mark.faults

KILLS = 11  # per entry point and configuration: at least 10 each CI run
POINTS = ("step", "validation", "checkpoint", "time")


def plan(rng: random.Random, attempt: int, epochs_done: int, fresh: bool, epoch_s: float) -> tuple[str, float]:
    """A kill moment within what a process resumed after ``epochs_done`` epochs still runs;
    the kinds of moment take turns, so that each is covered in every run.

    Mostly within its first epoch, so that a dozen kills spread over a three-epoch run. A fresh
    process is killed in its second epoch, after its first checkpoint: a run killed earlier
    has nothing to resume from (see the README's Robustness section).
    """
    point = POINTS[attempt % len(POINTS)]
    point = "step" if fresh and point == "time" else point
    if point == "time":
        return point, rng.uniform(0.0, 1.5 * epoch_s)
    epoch = 2 if fresh else (1 if rng.random() < 0.75 or epochs_done + 1 == EPOCHS else 2)
    if point == "step":
        return point, rng.randint(STEPS * (epoch - 1) + 1, STEPS * epoch)
    return point, epoch


def checkpoint_epoch(run: Path) -> int:
    """Epochs done by the run's checkpoint; it must load whenever it exists."""
    path = run / "checkpoint.pt"
    return int(load_checkpoint(path)["epoch"]) if path.exists() else 0


def kill_once(launcher: Launcher, kind: Kind, run: Path, point: str, n: float, fresh: bool) -> Result:
    argv = kind.argv(run) if fresh else ["--resume", str(run)]
    if point == "time":
        proc = launcher.start(kind.entry, argv)
        time.sleep(n)
        return proc.kill()
    proc = launcher.start(kind.entry, argv, {"pause_at": [point, int(n)]})
    if proc.wait_for(f"FAULT-PAUSED {point} {int(n)}"):
        return proc.kill()
    return proc.wait()


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(launcher: Launcher, reference: ReferenceRuns,
                                                             work: Path, kind: Kind) -> None:
    finished, seconds = reference(kind)
    rng = random.Random(f"kills-{kind.name}")
    run, kills, fresh, attempt = work / "killed", 0, True, 0
    while kills < KILLS:
        done = checkpoint_epoch(run) if not fresh else 0
        if done == EPOCHS:  # the kills came too late to land: the run finished
            break
        point, n = plan(rng, attempt, done, fresh, seconds / EPOCHS)
        attempt += 1
        result = kill_once(launcher, kind, run, point, n, fresh)
        assert result.rc in (0, -9), f"{point} {n}: exit {result.rc}\n{result.stderr}"
        fresh = False
        if result.rc == -9:
            kills += 1
            COUNTS[f"kills survived ({kind.name}, {point})"] += 1
        checkpoint_epoch(run)  # loads, or raises: never a half-written checkpoint
    result = launcher.run(kind.entry, ["--resume", str(run)])
    assert result.rc == 0 and checkpoint_epoch(run) == EPOCHS, result.stderr
    assert kills >= 10, f"only {kills} kills landed"
    weights, genotype = kind.final(run)
    ref_weights, ref_genotype = kind.final(finished)
    assert max_state_diff(weights, ref_weights) <= 1e-6
    assert genotype == ref_genotype
