"""Configuration: one dataclass per command is the single source of every default.

A command declares its options once, as dataclass fields with :func:`field_help`::

    @dataclass
    class SearchConfig:
        batch_size: int = field_help(64, "batch size", low=1)
        train_portion: float = field_help(0.5, "weight share of the data", low=0, high=1, low_open=True, high_open=True)
        unrolled: bool = field_help(False, "second-order architecture gradient")

    cfg = resolve_config(SearchConfig, argv, "train_search.py", "DARTS search")

and gets the flags (``--batch_size``, ``--unrolled``/``--no-unrolled``), the ``--config FILE``
YAML presets, type and range checks, and the YAML a run saves to be resumed from. Values come
from, lowest first: the dataclass defaults, the ``--config`` file, the flags typed. Every mistake
is a one-line :class:`~fairdarts.errors.UserError`.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from fairdarts.errors import CLIParser, UserError, one_line
from fairdarts.help_groups import group_of, grouped_choices, help_sections, metavar
from fairdarts.run_dir import atomic_write_text
from fairdarts.safe_io import load_yaml, read_text_limited, short_repr

C = TypeVar("C")
SCALARS = (int, float, str, bool)
SEED_MAX = 2**32 - 1  # NumPy's global generator takes seeds below 2**32


def field_help(default: Any, help: str, choices: Sequence[Any] | Mapping[str, Sequence[Any]] | None = None,
               low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, required: bool = False,
               group: str | None = None) -> Any:
    """A dataclass field that also carries its help text, allowed values and numeric range.

    ``low``/``high`` bound the value (or every element of a list), inclusive unless
    ``low_open``/``high_open``; ``None`` values of optional fields are not range-checked.
    ``required``: the flag must be typed. ``group``: its ``--help`` section when the shared
    table of :mod:`fairdarts.help_groups` does not fit this command. A help text that says
    "default" itself (e.g. "default 36 CIFAR, 48 ImageNet") gets no ``(default: ...)`` appended.
    ``choices`` as a mapping ``{case: values}`` (the rules of each search space) is offered
    case by case in ``--help``; the flag takes any of them, and the config's ``validate()``
    checks the value against its case.
    """
    groups = dict(choices) if isinstance(choices, Mapping) else None
    if groups is not None:
        choices = tuple(dict.fromkeys(v for values in groups.values() for v in values))
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "choice_groups": groups,
                "low": low, "high": high, "low_open": low_open, "high_open": high_open,
                "required": required, "group": group}
    if isinstance(default, list):  # a mutable default needs a factory, or all instances share it
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class _Kind:
    """What a field's annotation allows: a scalar type, maybe a list of it, maybe None, maybe Literal values."""
    base: type
    optional: bool = False
    is_list: bool = False
    literal: tuple[Any, ...] | None = None

    def describe(self) -> str:
        text = f"list of {self.base.__name__}" if self.is_list else self.base.__name__
        return f"{text} or null" if self.optional else text


def _kind(owner: type, name: str, annotation: Any) -> _Kind:
    optional = False
    if typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in typing.get_args(annotation):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            annotation, optional = rest[0], True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        kind = _Kind(type(args[0]), optional, literal=args)
    elif origin is list and len(args) == 1:
        kind = _Kind(args[0], optional, is_list=True)
    else:
        kind = _Kind(annotation, optional)
    if kind.base not in SCALARS or (kind.base is bool and (kind.optional or kind.is_list)) or \
            (kind.literal and any(type(a) is not kind.base for a in kind.literal)):
        raise TypeError(f"{owner.__name__}.{name}: unsupported option type {annotation!r}; use int, float, str, "
                        "bool, X | None, list[int], list[str] or Literal[...]")
    return kind


def _kinds(config_cls: type) -> dict[str, _Kind]:
    hints = typing.get_type_hints(config_cls)  # resolves the string annotations of `from __future__ import annotations`
    return {f.name: _kind(config_cls, f.name, hints[f.name]) for f in dataclasses.fields(config_cls)}


def _choices(field: dataclasses.Field, kind: _Kind) -> tuple[Any, ...] | None:
    return field.metadata.get("choices") or kind.literal


def _default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "none" if value is None else str(value)


# ----- flags ------------------------------------------------------------------------------
def _flag_type(kind: _Kind) -> Callable[[str], Any]:
    """The argparse ``type`` of a field; optional numbers also take ``none``, to undo a preset's value."""
    if not kind.optional or kind.base is str or kind.is_list:
        return kind.base

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind.base(text)
    parse.__name__ = kind.base.__name__  # argparse says "invalid int value: 'x'"
    return parse


def _flag_help(field: dataclasses.Field) -> str:
    """The help text with the default said once: appended unless the text says it already."""
    text = field.metadata.get("help", "")
    if field.metadata.get("choice_groups"):
        text = f"{text}; {grouped_choices(field.metadata['choice_groups'])}"
    if field.metadata.get("required"):
        return f"{text} (required)"
    if re.search(r"\bdefault\b", text):
        return text
    return f"{text} (default: {_show(_default(field))})"


def build_parser(config_cls: type, prog: str, description: str) -> CLIParser:
    """One ``--<field>`` flag per field of ``config_cls``, plus ``--config FILE``, in the
    ``--help`` sections of :mod:`fairdarts.help_groups`.

    Every default is ``argparse.SUPPRESS``: the parsed namespace holds only the flags typed,
    which is what lets them override the YAML file and nothing else.
    """
    parser = CLIParser(prog=prog, description=description, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE", help="YAML file of option: value pairs; flags override it")
    sections = help_sections(parser)
    kinds = _kinds(config_cls)
    for field in dataclasses.fields(config_cls):
        kind = kinds[field.name]
        kwargs: dict[str, Any] = {"dest": field.name, "help": _flag_help(field).replace("%", "%%")}
        if field.metadata.get("required"):
            kwargs["required"] = True
        if kind.base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            # argparse shows choices as {a,b}; grouped choices and other values by the shared metavar
            choices = None if field.metadata.get("choice_groups") else _choices(field, kind)
            kwargs.update(type=_flag_type(kind), choices=choices,
                          metavar=None if choices else metavar(field.name, kind.base))
            if kind.is_list:
                kwargs["nargs"] = "+"
        sections[group_of(field.name, field.metadata.get("group"))].add_argument(f"--{field.name}", **kwargs)
    return parser


# ----- YAML -------------------------------------------------------------------------------
def _coerce_scalar(base: type, value: Any) -> Any:
    """``value`` as ``base``, or ValueError. Ints pass as floats; a bool is never a number."""
    if isinstance(value, bool) != (base is bool):
        raise ValueError
    if base is float and isinstance(value, (int, str)):
        return float(value)  # PyYAML reads `3e-4` (no dot) as a string: accept the number it spells
    if not isinstance(value, base):
        raise ValueError
    return value


def _coerce(kind: _Kind, value: Any) -> Any:
    if value is None:
        if kind.optional:
            return None
        raise ValueError
    if kind.is_list:
        if not isinstance(value, list):
            raise ValueError
        return [_coerce_scalar(kind.base, v) for v in value]
    return _coerce_scalar(kind.base, value)


def _suggest(name: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else " (see --help for the valid names)"


def _read_file_values(config_cls: type, path: str | Path, ignore_unknown: bool = False) -> dict[str, Any]:
    """The options a YAML file sets, type-checked against ``config_cls`` (``ignore_unknown``:
    options ``config_cls`` does not have are skipped, as when reading another command's run)."""
    path = Path(path)
    text = read_text_limited(path, "config file")
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path} is not valid YAML: {one_line(getattr(exc, 'problem', None) or exc)}{where}") from None
    if data is None:  # an empty preset changes nothing
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a mapping of option: value, got a {type(data).__name__}")
    kinds = _kinds(config_cls)
    values = {}
    for key, value in data.items():
        if key not in kinds and ignore_unknown:
            continue
        if key not in kinds:
            name = short_repr(str(key))
            raise UserError(f"{path}: unknown option {name}{_suggest(str(key)[:200], kinds)}")
        try:
            values[key] = _coerce(kinds[key], value)
        except ValueError:
            raise UserError(f"{path}: {key}: expected {kinds[key].describe()}, got {short_repr(value)}") from None
    return values


# ----- checks -----------------------------------------------------------------------------
def _range_error(name: str, value: float, meta: Mapping[str, Any]) -> str | None:
    low, high, low_open, high_open = meta.get("low"), meta.get("high"), meta.get("low_open"), meta.get("high_open")
    # Comparisons with NaN are False, so NaN is rejected too.
    low_ok = low is None or (value > low if low_open else value >= low)
    high_ok = high is None or (value < high if high_open else value <= high)
    if low_ok and high_ok:
        return None
    def show(bound: float) -> str:
        return str(bound) if isinstance(bound, int) else f"{bound:g}"
    if low is not None and high is not None:
        bounds = f"in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
    elif low is not None:
        bounds = f"{'>' if low_open else '>='} {show(low)}"
    else:
        bounds = f"{'<' if high_open else '<='} {show(high)}"
    return f"{name} must be {bounds}, got {value!r}"


def _check(cfg: Any) -> None:
    """Choices and ranges from the field metadata, then the config's own cross-field ``validate()``."""
    kinds = _kinds(type(cfg))
    for field in dataclasses.fields(cfg):
        value, kind = getattr(cfg, field.name), kinds[field.name]
        choices = _choices(field, kind)
        for item in value if kind.is_list and value is not None else [value]:
            if item is None:
                continue
            if choices and item not in choices:
                raise UserError(f"{field.name} must be one of {', '.join(map(str, choices))}, got {short_repr(item)}")
            if kind.base is str and "\x00" in item:
                raise UserError(f"{field.name} holds a NUL character, which no path or name can hold")
            if kind.base is float and not math.isfinite(item):
                raise UserError(f"{field.name} must be a finite number, got {item!r}")
            if kind.base in (int, float):
                message = _range_error(field.name, item, field.metadata)
                if message:
                    raise UserError(message)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()


def _build(config_cls: type[C], values: dict[str, Any]) -> C:
    cfg = config_cls(**values)
    _check(cfg)
    return cfg


def resolve_config(config_cls: type[C], argv: Sequence[str] | None, prog: str, description: str) -> C:
    """The config of one command run: dataclass defaults < ``--config`` YAML < flags typed.

    ``argv=None`` reads ``sys.argv[1:]``. Raises UserError (one line) for anything invalid;
    a bad flag exits through the parser with code 2.
    """
    flags = vars(build_parser(config_cls, prog, description).parse_args(argv))
    path = flags.pop("config", None)
    values = _read_file_values(config_cls, path) if path else {}
    return _build(config_cls, {**values, **flags})


def load_config_file(config_cls: type[C], path: str | Path, ignore_unknown: bool = False) -> C:
    """The config a YAML file describes (missing options take their defaults), checked like flags."""
    return _build(config_cls, _read_file_values(config_cls, path, ignore_unknown))


def save_config(cfg: Any, path: str | Path) -> None:
    """Write ``cfg`` as plain YAML that :func:`load_config_file` (and ``--config``) read back."""
    atomic_write_text(Path(path), yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
