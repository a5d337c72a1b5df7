"""The run skeleton shared by the search (``train_search.py``) and the retraining (``train.py``).

:func:`run_command` is a command's ``main``: flags, ``--resume`` (the saved config.yaml),
threads, distributed init, data built before the run folder exists, :func:`fairdarts.resume.open_run`,
the run, its ``config.yaml``. A :class:`Command` says what differs: the config class, the flags a
resume may change, the run folder's kind and the builder of the run.

:class:`EpochRun` is the epoch loop both runs share: start epoch, learning-rate schedule rebuilt
and replayed on resume (:func:`replay_schedule`), the epochs, ``checkpoint.pt`` saved and loaded
with its format check. Subclasses say what an epoch does, what a checkpoint holds and what the
run leaves behind.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Sequence, TypeVar

import torch

from fairdarts.checkpoint import WriteError, load_checkpoint, save_checkpoint
from fairdarts.checkpoint_schema import Context, Record, check_checkpoint, nonfinite_paths
from fairdarts.config import resolve_config
from fairdarts.cpu_allocator import keep_freed_memory
from fairdarts.distributed import DistContext, cleanup_distributed, init_distributed, wait_for_all_ranks
from fairdarts.errors import UserError, counted
from fairdarts.guards import DivergenceError
from fairdarts.invocation import prog
from fairdarts.reproducibility import restore_rng_state, seed_everything
from fairdarts.resume import CHECKPOINT, flag_value, open_run, resume_config, write_run_config
from fairdarts.run_config import RunConfig
from fairdarts.run_dir import MetricsWriter
from fairdarts.threads import set_threads

C = TypeVar("C", bound=RunConfig)
Scheduler = torch.optim.lr_scheduler.LRScheduler


# ----- the epoch loop ---------------------------------------------------------------------
def replay_schedule(optimizer: torch.optim.Optimizer, lr: float, build: Callable[[torch.optim.Optimizer], Scheduler],
                    start_epoch: int) -> Scheduler:
    """``build(optimizer)`` from learning rate ``lr``, positioned at ``start_epoch``; step it after
    each epoch. A resumed run rebuilds it and replays its steps: the same float operations as an
    uninterrupted run (whatever lr the loaded optimizer carries), also when ``--epochs`` was
    raised on resume."""
    for group in optimizer.param_groups:
        group["lr"] = lr
        group.pop("initial_lr", None)
    scheduler = build(optimizer)
    with warnings.catch_warnings():  # replaying steps before any optimizer.step() is intended
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
        for _ in range(start_epoch):
            scheduler.step()
    return scheduler


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], name: str) -> None:
    """``optimizer.load_state_dict(state)``, then a ValueError unless every per-parameter buffer
    (momentum, Adam's moments) has its parameter's shape: torch loads any shape and fails only at
    the first step, deep in the run."""
    optimizer.load_state_dict(state)
    for param, buffers in optimizer.state.items():
        if not isinstance(param, torch.Tensor):  # an id no parameter group lists: torch keeps it as is
            raise ValueError(f"{name}: state for parameter {param}, which no parameter group holds")
        for key, value in buffers.items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                raise ValueError(f"{name}: a '{key}' buffer has shape {list(value.shape)}, its parameter "
                                 f"{list(param.shape)}")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class EpochRun(Generic[C]):
    """One run's epochs, resumable from its ``checkpoint.pt``; :meth:`run` starts at :attr:`start_epoch`.

    Subclasses set :attr:`checkpoint_format` (the ``format`` key their checkpoints carry),
    :attr:`checkpoint_schema` (what a resume reads of them, checked before anything is loaded),
    :attr:`checkpoint_kind` and :attr:`model_name` (the words of the resume errors), and
    implement :meth:`make_scheduler`, :meth:`run_epoch`, :meth:`state_dict`, :meth:`load_modules`,
    :meth:`load_progress` and :meth:`finish`.

    A run that cannot go on (a non-finite loss, weights or validation loss: :class:`DivergenceError`;
    a file it cannot write: :class:`WriteError`) stops with one line that adds to the cause what
    its folder keeps: :attr:`kept` records the epochs of the checkpoint files this run wrote or
    resumed from, and :meth:`write_state` is the only way they are written, never with a
    non-finite tensor.
    """

    checkpoint_format: ClassVar[str]
    checkpoint_schema: ClassVar[Record]
    checkpoint_kind: ClassVar[str]   # "a search checkpoint", ...
    model_name: ClassVar[str]        # "this search's supernet", ...
    rate_flags: ClassVar[str] = "--learning_rate"  # what a diverged run is told to lower

    def __init__(self, cfg: C, epochs: int, run_dir: Path, dist: DistContext, logger: logging.Logger):
        self.cfg, self.epochs, self.run_dir, self.dist, self.log = cfg, epochs, run_dir, dist, logger
        seed_everything(cfg.seed)
        self.start_epoch = 0
        self.kept: dict[str, int] = {}  # checkpoint files of the run folder known whole, by their epochs done
        self.writer = MetricsWriter(run_dir, enabled=dist.is_main)

    def run(self) -> Any:
        try:
            scheduler = self.make_scheduler(self.start_epoch)
            for epoch in range(self.start_epoch, self.epochs):
                if self.stops_early():
                    break
                self.run_epoch(epoch, scheduler)
            result = self.finish()
        except (DivergenceError, WriteError) as exc:
            raise UserError(self.stopped(exc)) from None
        self.writer.close()
        return result

    def stopped(self, exc: DivergenceError | WriteError) -> str:
        """Why the run stopped, what its folder keeps and what to do next, in one line."""
        resumable = CHECKPOINT in self.kept
        if resumable:
            kept = " and ".join(f"{name} with {counted(epochs, 'epoch')} done" for name, epochs in self.kept.items())
            kept = f"the run folder keeps {kept}"
        else:
            kept = f"the run wrote no {CHECKPOINT}, so there is nothing to resume"
        if isinstance(exc, WriteError):
            todo = f"free space, then resume with --resume {self.run_dir}" if resumable else "free space, start again"
        else:
            todo = f"start again with a lower {self.rate_flags}"
            todo += (f", or continue with --resume {self.run_dir} --skip_nonfinite to skip such steps" if resumable
                     else ", or with --skip_nonfinite to skip such steps")
        return f"{exc}: the run stopped; {kept}; {todo}"

    def batches_per_pass(self, loader: Any) -> int:
        """Batches one pass over ``loader`` takes: all of them, or ``--max_steps_per_epoch``."""
        cap = self.cfg.max_steps_per_epoch
        return len(loader) if cap is None else min(len(loader), cap)

    def make_scheduler(self, start_epoch: int) -> Scheduler:
        """The learning-rate schedule positioned at ``start_epoch`` (see :func:`replay_schedule`)."""
        raise NotImplementedError

    def run_epoch(self, epoch: int, scheduler: Scheduler) -> None:
        """One epoch: its steps, its evaluation, ``scheduler.step()``, its outputs and checkpoint."""
        raise NotImplementedError

    def finish(self) -> Any:
        """What the run leaves after its last epoch; returned by :meth:`run`."""
        raise NotImplementedError

    def stops_early(self) -> bool:
        """True when the run ends before ``epochs`` (the search's early stop); checked before
        every epoch, so a resumed run that had stopped runs no further epoch."""
        return False

    # ----- checkpoint ----------------------------------------------------------------------
    def state_dict(self, epochs_done: int, *args: Any) -> dict[str, Any]:
        raise NotImplementedError

    def save_checkpoint(self, epochs_done: int, *args: Any) -> None:
        self.write_state(self.state_dict(epochs_done, *args), CHECKPOINT)

    def write_state(self, state: dict[str, Any], name: str) -> None:
        """Write checkpoint file ``name`` of the run folder (atomically), refusing a state with a
        non-finite tensor first: such a file could only be resumed into NaNs."""
        self.check_finite_state(state, state["epoch"])
        save_checkpoint(state, self.run_dir / name)
        self.kept[name] = state["epoch"]

    @staticmethod
    def check_finite_state(state: dict[str, Any], epochs_done: int) -> None:
        """DivergenceError naming the first tensors of ``state`` that hold NaN or infinite values."""
        bad = nonfinite_paths(state)
        if bad:
            raise DivergenceError(f"the state after {counted(epochs_done, 'epoch')} holds NaN or infinite values in "
                                  f"{len(bad)} tensors ({', '.join(bad[:3])})")

    def load_modules(self, state: dict[str, Any]) -> None:
        """Weights and optimizer states; RuntimeError, ValueError or KeyError when they do not fit."""
        raise NotImplementedError

    def load_progress(self, state: dict[str, Any]) -> None:
        """Everything else a subclass keeps (data position, histories, best weights)."""
        raise NotImplementedError

    def schema_context(self) -> Context:
        """The run-dependent bounds of :attr:`checkpoint_schema`: the epoch at most ``self.epochs``."""
        return Context(epochs=self.epochs)

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Checks the format and every field the load reads (:attr:`checkpoint_schema`), then
        loads; a checkpoint of another run, or a damaged one, is one line of UserError."""
        if state.get("format") != self.checkpoint_format:
            raise UserError(f"{source} is not {self.checkpoint_kind} ({self.checkpoint_format}); "
                            "cannot resume from it")
        check_checkpoint(state, self.checkpoint_schema, source, self.schema_context())
        try:
            self.load_modules(state)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise UserError(f"{source} does not match {self.model_name}: {first_line(exc)}") from None
        self.load_progress(state)
        self.start_epoch = state["epoch"]
        try:
            restore_rng_state(state["rng"])
        except (ValueError, TypeError, RuntimeError) as exc:
            raise UserError(f"{source}: field 'rng' is not a random-number state: {first_line(exc)}") from None
        self.kept[CHECKPOINT] = self.start_epoch

    def resume(self, path: Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location="cpu"), f"checkpoint {path}")
        self.log.info("resumed from %s after epoch %d of %d", path, self.start_epoch, self.epochs)


# ----- the command ------------------------------------------------------------------------
Builder = Callable[[Any, Path, logging.Logger], EpochRun]
Inputs = Sequence[tuple[str, "str | None"]]


def _same(cfg: Any) -> Any:
    return cfg


def _nothing(cfg: Any) -> None:
    return None


def _no_inputs(cfg: Any) -> Inputs:
    return ()


@dataclass(frozen=True)
class Command(Generic[C]):
    """What a run command is made of.

    ``name`` is the command's key in :data:`fairdarts.invocation.COMMANDS` (its usage line names
    the command as the user started it). ``kind`` names the default folder
    ``runs/<kind>-<timestamp>`` and the config log line; ``what`` names the run in the
    ``--resume`` messages. ``resolve`` completes a new run's config; ``prepare(cfg)`` checks
    more inputs before any process group exists (the retraining resolves ``--arch``);
    ``start(cfg, prepared, dist)`` builds the data (missing data fails there, before a run
    folder exists) and returns the builder of the run, called once the folder is open;
    ``inputs(cfg)`` are the ``(flag, path)`` files the run reads."""

    config_cls: type[C]
    name: str
    description: str
    kind: str
    what: str
    overridable: frozenset[str]
    start: Callable[[Any, Any, DistContext], Builder]
    resolve: Callable[[Any], Any] = _same
    prepare: Callable[[Any], Any] = _nothing
    inputs: Callable[[Any], Inputs] = _no_inputs


def _command_config(command: Command[C], argv: list[str]) -> tuple[C, Path | None]:
    """The run's config (``--resume``: the saved one) with its thread count set; the checkpoint to load."""
    usage = prog(command.name)
    cfg = command.resolve(resolve_config(command.config_cls, argv, usage, command.description))
    ckpt = None
    if cfg.resume:
        cfg, ckpt = resume_config(command.config_cls, cfg.resume, argv, command.overridable, usage,
                                  command.description, command.what)
    threads = set_threads(cfg.threads)
    if ckpt is None:  # a new run records the count; a resumed one keeps its config.yaml (and --threads typed)
        cfg = dataclasses.replace(cfg, threads=threads)
    return cfg, ckpt


def run_command(command: Command[C], argv: Sequence[str] | None = None) -> int:
    """A run command's ``main``: 0 when the run finished; a mistake is one line of UserError."""
    keep_freed_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, ckpt = _command_config(command, argv)
    prepared = command.prepare(cfg)
    dist = init_distributed(cfg.device)
    try:
        build = command.start(cfg, prepared, dist)
        inputs = [("--config", flag_value(argv, "--config")), *command.inputs(cfg)]
        with open_run(cfg, command.kind, ckpt, dist, inputs) as (cfg, run_dir, logger):
            logger.info("%s config: %s", command.kind, dataclasses.asdict(cfg))
            logger.info("intra-op CPU threads: %d (--threads)", torch.get_num_threads())
            run = build(cfg, run_dir, logger)
            if ckpt is not None:
                run.resume(ckpt)
            write_run_config(cfg, run_dir, dist)  # after the checkpoint loaded: a failed resume keeps the old file
            run.run()
            wait_for_all_ranks()
            logger.info("run folder: %s", run_dir)
    finally:
        cleanup_distributed()
    return 0
