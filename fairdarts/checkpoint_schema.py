"""What each kind of checkpoint may hold, checked field by field before any of it is used.

A checkpoint is a file the user hands us: a hand-edited, truncated-then-patched or hostile one
must fail with one line that names the field, never hang (an ``epoch`` of 10**9 would replay
10**9 schedule steps), allocate without bound (a ``network`` of 10**9 channels) or load NaN
weights into a run. Each kind has one schema, a :class:`Record` of :class:`Rule` objects:

* :data:`SEARCH` (``fairdarts-search/1``), :data:`TRAIN` (``fairdarts-train/1``, read by
  ``train.py --resume``), :data:`CANDIDATE` (a random-search candidate): what a resume reads;
* :data:`PROJECT_MODEL` and :data:`OFFICIAL_MODEL`: what ``evaluate.py`` reads of a retraining
  checkpoint (or ``model_best.pt``) and of an official ``{'state_dict': ...}`` file.

Fields a command does not read are not checked (a resume reads its config from config.yaml,
not from the checkpoint). Bounds that depend on the run (``epoch`` at most the run's epochs,
the alpha history's shape) come from a :class:`Context`. ``tests/test_checkpoint_schema.py``
derives its fuzz cases from these schemas: every field, replaced by a wrong type, a negative,
a huge value and NaN, must be refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

from fairdarts.errors import UserError
from fairdarts.safe_io import short_repr

#: The most epochs a checkpoint may say were done: a resume replays that many schedule steps.
MAX_EPOCHS = 100_000
#: Counters that only position a stream (the architecture batches): any real run stays far below.
MAX_COUNT = 10**9


class CheckpointError(UserError):
    """A checkpoint field that is missing or of the wrong type, range or shape."""


@dataclass(frozen=True)
class Context:
    """What the bounds of one check depend on: the run's epochs (``None``: no run, as in
    ``evaluate.py``), the checkpoint's own epoch once checked, and the alpha shapes of the
    supernet that will load it."""

    epochs: int | None = None
    epoch: int | None = None
    alpha_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


class Bad(Exception):
    """Raised by a rule: ``problem`` says what is wrong, ``where`` is the field's path below the rule's."""

    def __init__(self, problem: str, where: str = "") -> None:
        super().__init__(problem)
        self.problem, self.where = problem, where


def _join(key: str, below: str) -> str:
    return f"{key}.{below}" if below else key


def _bad_type(expected: str, value: Any) -> Bad:
    return Bad(f"must be {expected}, got {type(value).__name__} {short_repr(value)}")


class Rule:
    """One field's allowed values; :meth:`check` raises :class:`Bad`."""

    def check(self, value: Any, ctx: Context) -> None:
        raise NotImplementedError

    def fields(self) -> Iterator[tuple[str, Rule]]:
        """(path, rule) of the named fields below this rule (for the fuzz test)."""
        return iter(())


@dataclass(frozen=True)
class Int(Rule):
    """A Python int (not a bool) in ``low..high``; ``high`` may depend on the context."""

    low: int
    high: int | Callable[[Context], int]
    unit: str = ""

    def check(self, value: Any, ctx: Context) -> None:
        high = self.high(ctx) if callable(self.high) else self.high
        if type(value) is not int:
            raise _bad_type("an integer", value)
        if not self.low <= value <= high:
            raise Bad(f"must be an integer in {self.low}..{high}{self.unit}, got {short_repr(value)}")


@dataclass(frozen=True)
class Real(Rule):
    """A finite int or float in ``low..high``; ``special`` lists the non-finite values allowed too."""

    low: float
    high: float
    special: tuple[str, ...] = ()  # "nan", "-inf"

    def check(self, value: Any, ctx: Context) -> None:
        if type(value) not in (int, float):
            raise _bad_type("a number", value)
        if math.isnan(value) and "nan" in self.special or value == -math.inf and "-inf" in self.special:
            return
        if not self.low <= value <= self.high:
            also = f" (or {' or '.join(self.special)})" if self.special else ""
            raise Bad(f"must be a number in {self.low:g}..{self.high:g}{also}, got {short_repr(value)}")


@dataclass(frozen=True)
class Text(Rule):
    """A string, at most ``limit`` characters."""

    limit: int = 256

    def check(self, value: Any, ctx: Context) -> None:
        if type(value) is not str:
            raise _bad_type("a string", value)
        if len(value) > self.limit:
            raise Bad(f"must be a string of at most {self.limit} characters, got {len(value)}")


@dataclass(frozen=True)
class Flag(Rule):
    def check(self, value: Any, ctx: Context) -> None:
        if type(value) is not bool:
            raise _bad_type("true or false", value)


@dataclass(frozen=True)
class Maybe(Rule):
    """``None`` or a value of ``rule``."""

    rule: Rule

    def check(self, value: Any, ctx: Context) -> None:
        if value is not None:
            self.rule.check(value, ctx)

    def fields(self) -> Iterator[tuple[str, Rule]]:
        return self.rule.fields()


@dataclass(frozen=True)
class Key:
    """A field of a :class:`Record`; ``optional`` ones may be absent (checkpoints of earlier versions)."""

    name: str
    rule: Rule
    optional: bool = False


@dataclass(frozen=True)
class Record(Rule):
    """A dict with these keys (others are ignored); checked in order, so a later rule may use an
    earlier field through the context (see :data:`SEARCH`'s ``epoch``)."""

    keys: tuple[Key, ...]
    what: str = "a mapping"

    def check(self, value: Any, ctx: Context) -> None:
        if not isinstance(value, dict):
            raise _bad_type(self.what, value)
        for key in self.keys:
            if key.name not in value:
                if key.optional:
                    continue
                raise Bad("is missing", key.name)
            try:
                key.rule.check(value[key.name], ctx)
            except Bad as bad:
                raise Bad(bad.problem, _join(key.name, bad.where)) from None

    def fields(self) -> Iterator[tuple[str, Rule]]:
        for key in self.keys:
            yield key.name, key.rule
            for below, rule in key.rule.fields():
                yield _join(key.name, below), rule


def _tensors(value: Any) -> Iterator[tuple[str, Tensor]]:
    """(path, tensor) of every tensor in nested dicts, lists and tuples."""
    if isinstance(value, Tensor):
        yield "", value
    elif isinstance(value, (dict, list, tuple)):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            for below, t in _tensors(v):
                yield _join(str(k), below), t


def nonfinite_paths(value: Any, floats: bool = False) -> list[str]:
    """Paths of the floating-point tensors in ``value`` that hold NaN or infinite values (and,
    with ``floats``, of non-finite Python floats): the one test behind "no non-finite state is
    written, none is loaded"."""
    bad = [path for path, t in _tensors(value)
           if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all())]
    return (bad + [path for path, x in _floats(value) if not math.isfinite(x)]) if floats else bad


def _floats(value: Any) -> Iterator[tuple[str, float]]:
    """(path, float) of every Python float in nested dicts, lists and tuples."""
    if type(value) is float:
        yield "", value
    elif isinstance(value, (dict, list, tuple)):
        for k, v in value.items() if isinstance(value, dict) else enumerate(value):
            for below, x in _floats(v):
                yield _join(str(k), below), x


@dataclass(frozen=True)
class Weights(Rule):
    """A state dict: parameter names to tensors, every floating-point one finite."""

    def check(self, value: Any, ctx: Context) -> None:
        if not isinstance(value, dict) or not value:
            raise _bad_type("a non-empty mapping of names to tensors", value)
        for name, t in value.items():
            if type(name) is not str or not isinstance(t, Tensor):
                raise Bad(f"must map names to tensors, got {type(name).__name__} {short_repr(name)} -> "
                          f"{type(t).__name__}")
        _refuse_nonfinite(value)


def _refuse_nonfinite(value: Any) -> None:
    bad = nonfinite_paths(value, floats=True)
    if bad:
        raise Bad(f"holds NaN or infinite values in {len(bad)} entries (first: {', '.join(bad[:3])}): the run that "
                  "wrote it diverged")


@dataclass(frozen=True)
class OptimizerState(Rule):
    """``optimizer.state_dict()``: ``state`` and ``param_groups``, every tensor and float finite."""

    def check(self, value: Any, ctx: Context) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("state"), dict) \
                or not isinstance(value.get("param_groups"), list) \
                or not all(isinstance(g, dict) for g in value["param_groups"]):
            raise _bad_type("an optimizer state ({'state': {...}, 'param_groups': [{...}]})", value)
        _refuse_nonfinite(value)


@dataclass(frozen=True)
class MapOf(Rule):
    """A dict of string keys to values of ``rule`` (metrics)."""

    rule: Rule

    def check(self, value: Any, ctx: Context) -> None:
        if not isinstance(value, dict):
            raise _bad_type("a mapping", value)
        for k, v in value.items():
            if type(k) is not str:
                raise Bad(f"must have string keys, got {short_repr(k)}")
            try:
                self.rule.check(v, ctx)
            except Bad as bad:
                raise Bad(bad.problem, _join(k, bad.where)) from None


@dataclass(frozen=True)
class IntList(Rule):
    """A list (or tuple) of exactly ``length`` ints in ``low..high``."""

    length: int
    low: int
    high: int

    def check(self, value: Any, ctx: Context) -> None:
        if type(value) not in (list, tuple) or len(value) != self.length:
            raise _bad_type(f"a list of {self.length} integers", value)
        if not all(type(v) is int and self.low <= v <= self.high for v in value):
            raise Bad(f"must hold integers in {self.low}..{self.high} only")


@dataclass(frozen=True)
class ByteState(Rule):
    """A generator state: a 1-D uint8 tensor of ``size`` bytes (``None``: any size up to 1 MB)."""

    size: int | None

    def check(self, value: Any, ctx: Context) -> None:
        n = self.size if self.size is not None else "up to 1048576"
        if not isinstance(value, Tensor) or value.dtype != torch.uint8 or value.dim() != 1 \
                or (value.numel() != self.size if self.size is not None else value.numel() > 1 << 20):
            shown = f"{value.dtype} tensor {list(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise Bad(f"must be a uint8 tensor of {n} bytes, got {shown}")


@dataclass(frozen=True)
class ListOf(Rule):
    """A list of at most ``limit`` values of ``rule``."""

    rule: Rule
    limit: int

    def check(self, value: Any, ctx: Context) -> None:
        if type(value) not in (list, tuple) or len(value) > self.limit:
            raise _bad_type(f"a list of at most {self.limit} entries", value)
        for i, v in enumerate(value):
            try:
                self.rule.check(v, ctx)
            except Bad as bad:
                raise Bad(bad.problem, _join(str(i), bad.where)) from None


@dataclass(frozen=True)
class AlphaHistoryRule(Rule):
    """``{'epochs': [0..epoch-1], 'raw' / 'gated': {group: [epoch, *alpha shape] float64}}``:
    one record per epoch done, for the groups and shapes of the supernet that loads it."""

    def check(self, value: Any, ctx: Context) -> None:
        epochs = list(range(ctx.epoch or 0))
        if not isinstance(value, dict) or set(value) < {"epochs", "raw", "gated"}:
            raise _bad_type("an alpha history ({'epochs', 'raw', 'gated'})", value)
        if type(value["epochs"]) is not list or value["epochs"] != epochs:
            raise Bad(f"must list the epochs done, 0..{len(epochs) - 1}, got {short_repr(value['epochs'])}",
                      "epochs")
        for kind in ("raw", "gated"):
            self._check_groups(value[kind], kind, len(epochs), ctx)

    @staticmethod
    def _check_groups(groups: Any, kind: str, n: int, ctx: Context) -> None:
        if not isinstance(groups, dict) or set(groups) != set(ctx.alpha_shapes):
            raise Bad(f"must hold the groups {', '.join(ctx.alpha_shapes)}, got {short_repr(groups)}", kind)
        for group, shape in ctx.alpha_shapes.items():
            t = groups[group]
            expected = (n, *shape)
            if not isinstance(t, Tensor) or tuple(t.shape) != expected or not t.is_floating_point():
                got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise Bad(f"must be a float tensor of shape {list(expected)}, got {got}", f"{kind}.{group}")
            if not bool(torch.isfinite(t).all()):
                raise Bad("holds NaN or infinite values", f"{kind}.{group}")


def _epochs_bound(ctx: Context) -> int:
    return min(ctx.epochs if ctx.epochs is not None else MAX_EPOCHS, MAX_EPOCHS)


def _done_bound(ctx: Context) -> int:
    return ctx.epoch if ctx.epoch is not None else MAX_EPOCHS


#: The checkpoint's ``epoch``: epochs done, at most the run's ``--epochs``.
EPOCH = Int(0, _epochs_bound, " (the run's --epochs)")

#: :func:`fairdarts.reproducibility.capture_rng_state`.
#: A cached Gaussian draw: |x| > 100 has probability below 1e-2000, so it can only be a damaged file.
GAUSSIAN = Real(-100, 100)
RNG = Record((
    Key("python", Record((Key("version", Int(3, 3)), Key("state", IntList(625, 0, 2**32 - 1)),
                          Key("gauss_next", Maybe(GAUSSIAN))))),
    Key("numpy", Record((Key("bit_generator", Text()), Key("keys", IntList(624, 0, 2**32 - 1)),
                         Key("pos", Int(0, 624)), Key("has_gauss", Int(0, 1)),
                         Key("cached_gaussian", GAUSSIAN)))),
    Key("torch", ByteState(int(torch.get_rng_state().numel()))),
    Key("cuda", ListOf(ByteState(None), 1024)),
), "the random-number state")

SEARCH = Record((
    Key("epoch", EPOCH),
    Key("model", Weights()),
    Key("w_optimizer", OptimizerState()),
    Key("a_optimizer", OptimizerState()),
    Key("arch_batches", Record((Key("epoch", Int(0, MAX_COUNT)), Key("batch", Int(0, MAX_COUNT))))),
    Key("rng", RNG),
    Key("alpha_history", AlphaHistoryRule()),
))

_BEST = Record((
    Key("epoch", Int(0, _done_bound, " (the checkpoint's epoch)")),
    Key("acc_top1", Real(0, 100, ("-inf",))),
    Key("metrics", MapOf(Real(-1e308, 1e308, ("nan",)))),
    Key("state_dict", Maybe(Weights())),
))

#: ``GradScaler.state_dict()``: empty when the scaler is off (CPU), else its five numbers.
SCALER = Record((
    Key("scale", Real(0, 3.4e38), optional=True),
    Key("growth_factor", Real(0, 3.4e38), optional=True),
    Key("backoff_factor", Real(0, 3.4e38), optional=True),
    Key("growth_interval", Int(0, MAX_COUNT), optional=True),
    Key("_growth_tracker", Int(0, MAX_COUNT), optional=True),
), "the GradScaler state")

TRAIN = Record((
    Key("epoch", EPOCH),
    Key("state_dict", Weights()),
    Key("optimizer", OptimizerState()),
    Key("scaler", SCALER, optional=True),
    Key("rng", RNG),
    Key("best_acc_top1", Real(0, 100, ("-inf",))),
    Key("best", _BEST, optional=True),  # absent in checkpoints of earlier versions
))

CANDIDATE = Record((
    Key("epoch", EPOCH),
    Key("state_dict", Weights()),
    Key("optimizer", OptimizerState()),
    Key("rng", RNG),
))

#: ``network``: :meth:`fairdarts.search_space.NetworkSpec.to_dict`. The bounds are far above any
#: network of the papers (36 channels, 20 cells, 1000 classes, 224 pixels) and keep a hostile
#: record from allocating without end before the weights are compared with it.
NETWORK = Record((
    Key("init_channels", Maybe(Int(1, 1024))),
    Key("layers", Maybe(Int(3, 256))),
    Key("num_classes", Int(1, 100_000)),
    Key("in_channels", Int(1, 64)),
    Key("image_size", Int(1, 512)),
    Key("auxiliary", Flag()),
    Key("imagenet_net", Flag()),
    Key("width_mult", Real(0.01, 4), optional=True),
    Key("dropout", Real(0, 1), optional=True),
    Key("mobile", Flag(), optional=True),
))

PROJECT_MODEL = Record((
    Key("state_dict", Weights()),
    Key("network", NETWORK),
    Key("dataset", Record((Key("name", Text()),), "a mapping with the dataset's name"), optional=True),
))

OFFICIAL_MODEL = Record((Key("state_dict", Weights()),))


def check_checkpoint(state: Mapping[str, Any], schema: Record, source: str, ctx: Context = Context()) -> None:
    """Raise :class:`CheckpointError` (one line naming the field) unless ``state`` fits ``schema``.

    A valid ``epoch`` then bounds the fields that depend on it (``best.epoch``, the alpha
    history's length)."""
    epoch = state.get("epoch")
    if type(epoch) is int and 0 <= epoch <= MAX_EPOCHS:
        ctx = Context(ctx.epochs, epoch, ctx.alpha_shapes)
    try:
        schema.check(state, ctx)
    except Bad as bad:
        raise CheckpointError(f"{source}: field '{bad.where}' {bad.problem}; the file is damaged or not a "
                              "checkpoint of this kind") from None

