"""Run one of the repository's command lines with fault points patched in, from the outside.

    python tests/faults/wrapper.py '{"pause_at": ["checkpoint", 2]}' train_search.py --epochs 3 ...

The production code has no test switches: this wrapper monkeypatches it before the command
runs. The JSON spec may hold:

``pause_at: [point, n]``
    the n-th time this process reaches ``point`` it prints ``FAULT-PAUSED point n`` and sleeps,
    so that the test SIGKILLs it exactly there. Points:
    ``step``        mid-step (search: alphas updated, weights not yet; retraining: after the
                    forward, before the backward),
    ``validation``  after the first validation batch,
    ``checkpoint``  half of the bytes of ``checkpoint.pt``'s temporary file written,
    ``after_checkpoint``  ``checkpoint.pt`` written, nothing after it yet (in a retraining that
                    improved: before ``model_best.pt``),
    ``startup``     the run folder locked and its ``config.yaml`` written, no epoch begun
                    (n is 1).
``pause_best_at: epoch``
    in a retraining, pause (``FAULT-PAUSED best EPOCH``) between writing ``checkpoint.pt`` and
    ``model_best.pt`` after that epoch (numbered from 1, as the checkpoint counts), if it
    improved the best test top-1.
``enospc_at: n``
    the n-th write of ``checkpoint.pt`` fails with ENOSPC after half its bytes (a full disk);
    it first prints ``FAULT-ENOSPC <sha256 of the checkpoint.pt on disk>``.
``nonfinite_at: [epoch, step]``
    the losses of that step (numbered from 1) are NaN: in a search the architecture objective
    and the weights' cross entropy, in a retraining the training loss. The forward itself stays
    finite, as when a too large learning rate makes the logits overflow.

:mod:`zygote` (beside this file) forks processes that run :func:`run_entry` without paying the
interpreter and torch start-up for each one.
"""
from __future__ import annotations

import errno
import hashlib
import json
import runpy
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import Tensor

REPO = Path(__file__).resolve().parents[2]
PAUSE_S = 300.0  # long enough for any test to notice the marker and kill


class Faults:
    """The fault points of one process and how often each was reached."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.hits: dict[str, int] = {}
        self.epoch = 0
        self.step = 0
        self.in_step = False

    def hit(self, point: str) -> None:
        self.hits[point] = self.hits.get(point, 0) + 1
        if self.spec.get("pause_at") == [point, self.hits[point]]:
            print(f"FAULT-PAUSED {point} {self.hits[point]}", flush=True)
            time.sleep(PAUSE_S)

    def start_epoch(self, epoch: int) -> None:
        self.epoch, self.step = epoch, 0

    def run_step(self, step: Callable[[], Any]) -> Any:
        """Count a training step and run it; :meth:`poison` acts within the step it names."""
        self.step += 1
        self.in_step = True
        try:
            return step()
        finally:
            self.in_step = False

    def poison(self, loss: Tensor) -> Tensor:
        """``loss``, or NaN within the step ``nonfinite_at`` names."""
        hit = self.in_step and self.spec.get("nonfinite_at") == [self.epoch, self.step]
        return loss * float("nan") if hit else loss

    def pausing(self, batches: Iterable) -> Iterator:
        """``batches``, reaching the ``validation`` point after the first one."""
        for i, batch in enumerate(batches):
            if i == 1:
                self.hit("validation")
            yield batch


class FaultyFile:
    """A file that writes half of its first write, then pauses or fails as the spec says."""

    def __init__(self, f: Any, faults: Faults, enospc: bool) -> None:
        self._f, self._faults, self._enospc = f, faults, enospc

    def write(self, data: bytes) -> int:
        half = len(data) // 2
        self._f.write(data[:half])
        self._f.flush()
        if self._enospc:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._faults.hit("checkpoint")
        return half + self._f.write(data[half:])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> "FaultyFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"


def _patch_checkpoint(faults: Faults) -> None:
    import fairdarts.checkpoint as ckpt
    import fairdarts.runner as runner

    original = ckpt.atomic_write
    writes = [0]

    def atomic_write(path, data, opener=open):
        path = Path(path)
        if path.name != "checkpoint.pt":
            return original(path, data, opener)
        writes[0] += 1
        enospc = faults.spec.get("enospc_at") == writes[0]
        if enospc:
            print(f"FAULT-ENOSPC {_sha256(path)}", flush=True)
        result = original(path, data, lambda p, mode: FaultyFile(opener(p, mode), faults, enospc))
        faults.hit("after_checkpoint")
        return result

    ckpt.atomic_write = atomic_write
    write_run_config = runner.write_run_config

    def written(*args, **kwargs):
        write_run_config(*args, **kwargs)
        faults.hit("startup")
    runner.write_run_config = written


class PoisonedFunctional:
    """``torch.nn.functional`` whose ``cross_entropy`` goes through :meth:`Faults.poison`."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._faults.poison(torch.nn.functional.cross_entropy(*args, **kwargs))


def _patch_search(faults: Faults) -> None:
    from fairdarts.search import architect, loop, searcher

    arch_step, objective = architect.Architect.step, architect.ArchObjective.__call__
    search_step = loop.SearchStep.__call__
    train_one_epoch, validate = searcher.Searcher.train_one_epoch, searcher.validate

    def step(self, *args, **kwargs):
        stats = arch_step(self, *args, **kwargs)
        faults.hit("step")
        return stats

    def poisoned_objective(self, *args, **kwargs):
        total, ce, l01 = objective(self, *args, **kwargs)
        return faults.poison(total), ce, l01

    def epoch(self, e, *args, **kwargs):
        faults.start_epoch(e)
        return train_one_epoch(self, e, *args, **kwargs)

    architect.Architect.step, architect.ArchObjective.__call__ = step, poisoned_objective
    loop.SearchStep.__call__ = lambda self, *a, **k: faults.run_step(lambda: search_step(self, *a, **k))
    loop.F = PoisonedFunctional(faults)
    searcher.Searcher.train_one_epoch = epoch
    searcher.validate = lambda model, batches, *a, **k: validate(model, faults.pausing(batches), *a, **k)


def _patch_train(faults: Faults) -> None:
    from fairdarts.train import step as train_step, trainer

    loss, call = train_step.TrainStep.loss, train_step.TrainStep.__call__
    train_one_epoch, evaluate_sums = trainer.Trainer.train_one_epoch, trainer.evaluate_sums

    def patched_loss(self, *args, **kwargs):
        faults.hit("step")
        total, ce = loss(self, *args, **kwargs)
        return faults.poison(total), faults.poison(ce)

    def epoch(self, e, *args, **kwargs):
        faults.start_epoch(e)
        return train_one_epoch(self, e, *args, **kwargs)

    write_best = trainer.Trainer.write_best

    def best(self, *args, **kwargs):
        if faults.spec.get("pause_best_at") == self.best_epoch:
            print(f"FAULT-PAUSED best {self.best_epoch}", flush=True)
            time.sleep(PAUSE_S)
        return write_best(self, *args, **kwargs)

    trainer.Trainer.write_best = best
    train_step.TrainStep.loss = patched_loss
    train_step.TrainStep.__call__ = lambda self, *a, **k: faults.run_step(lambda: call(self, *a, **k))
    trainer.Trainer.train_one_epoch = epoch
    trainer.evaluate_sums = lambda model, batches, *a, **k: evaluate_sums(model, faults.pausing(batches), *a, **k)


def install(entry: str, spec: dict[str, Any]) -> None:
    """Patch the fault points ``spec`` needs into the modules ``entry`` runs."""
    if not spec:
        return
    faults = Faults(spec)
    _patch_checkpoint(faults)
    if entry == "train_search.py":
        _patch_search(faults)
    elif entry == "train.py":
        _patch_train(faults)


def run_entry(entry: str, argv: list[str], spec: dict[str, Any]) -> None:
    """Run ``entry`` (a root script, or a module for ``python -m``) as ``__main__`` with ``argv``."""
    sys.path[0] = str(REPO)  # what `python script.py` from the repository root puts first
    install(entry, spec)
    if entry.endswith(".py"):
        sys.argv = [entry, *argv]
        runpy.run_path(str(REPO / entry), run_name="__main__")
    else:
        sys.modules.pop(entry, None)  # as in a fresh `python -m`: runpy warns about a module already imported
        sys.argv = [entry, *argv]
        runpy.run_module(entry, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    run_entry(sys.argv[2], sys.argv[3:], json.loads(sys.argv[1]))
