"""The sections of every command's ``--help``, from one table.

A flag's section is, in order: the ``group`` of its :func:`fairdarts.config.field_help`
(for the rare flag whose name means something else in one command), else :data:`FLAG_GROUPS`
by flag name (the commands share their names: ``--data`` is a data flag everywhere; the table
also places the flags of the S2 search space, ``--search_space``, ``--width_mult``,
``--mobile_skip``...), else ``other``: a flag nobody placed still shows, under ``other``.
"""
from __future__ import annotations

import argparse
import typing
from typing import Any, Callable, Mapping, Sequence

#: Section titles in the order ``--help`` prints them.
GROUPS: tuple[str, ...] = ("data", "network", "optimisation", "architecture", "collapse instrument", "run folder",
                           "devices/speed", "logging", "outputs", "ablations (darts/ only)", "other")

FLAG_GROUPS: dict[str, str] = {
    **dict.fromkeys(("source", "reduce", "data", "dataset", "download", "train_portion", "subset", "test_subset",
                     "image_size", "cutout", "cutout_length", "auto_aug", "augment", "inputs", "num_classes",
                     "in_channels"), "data"),
    **dict.fromkeys(("model_path", "arch", "all", "network", "search_space", "init_channels", "layers",
                     "width_mult", "primitives", "mobile_skip", "gate", "alpha_init", "auxiliary", "auxiliary_weight",
                     "drop_path_prob", "dropout"), "network"),
    **dict.fromkeys(("epochs", "batch_size", "learning_rate", "learning_rate_min", "lr_schedule", "gamma",
                     "warmup_epochs", "momentum", "weight_decay", "label_smoothing", "grad_clip", "accum_steps",
                     "seed", "max_steps_per_epoch", "skip_nonfinite"), "optimisation"),
    **dict.fromkeys(("arch_learning_rate", "arch_weight_decay", "arch_beta1", "arch_beta2", "aux_loss_weight",
                     "sep_loss", "unrolled", "hessian", "single_level", "parse_method", "op_threshold"),
                    "architecture"),
    **dict.fromkeys(("hessian_every", "hessian_batches", "hessian_iters", "hessian_tol", "hessian_zero_one",
                     "early_stop_eigen", "early_stop_window", "early_stop_delta", "early_stop_factor",
                     "early_stop_start"), "collapse instrument"),
    **dict.fromkeys(("save", "resume"), "run folder"),
    **dict.fromkeys(("device", "threads", "workers", "amp", "amp_dtype", "channels_last", "compile", "sync_bn"),
                    "devices/speed"),
    **dict.fromkeys(("report_freq", "progress", "eval_every", "plot_every"), "logging"),
    **dict.fromkeys(("per_class", "confusion", "dump_logits", "export", "export_path", "json", "out", "name",
                     "overwrite"),
                    "outputs"),
    **dict.fromkeys(("noise_darts", "noise_type", "noise_scheduler", "max_step", "random_search", "num_identity",
                     "num_arch", "flops_threshold", "max_tries", "train_random_epochs", "reweight"),
                    "ablations (darts/ only)"),
}


#: Metavars of the flags whose type says too little (files, folders, genotypes, rules); every other
#: flag shows its type (INT, FLOAT, STR), or its choices as ``{a,b}``. Shared by every command.
METAVARS: dict[str, str] = {
    **dict.fromkeys(("data", "save", "out"), "DIR"),
    **dict.fromkeys(("config", "model_path", "inputs", "confusion", "dump_logits", "export_path", "reduce"), "FILE"),
    "resume": "RUN_DIR", "arch": "ARCH", "parse_method": "METHOD",
}


def metavar(name: str, kind: type | Callable[[str], Any]) -> str:
    """The metavar of flag ``name`` whose parser is ``kind`` (a type, or a function whose return
    annotation says the type): :data:`METAVARS`, else the type's name in capitals."""
    if not isinstance(kind, type):
        kind = typing.get_type_hints(kind).get("return", str)
    return METAVARS.get(name) or {int: "INT", float: "FLOAT"}.get(kind, "STR")  # type: ignore[call-overload]


def grouped_choices(groups: Mapping[str, Sequence[Any]]) -> str:
    """``cell: darts, threshold_sparse; mobile: argmax``: the values a flag takes in each case
    (a search space, say), for a help text that offers each case only its own."""
    return "; ".join(f"{case}: {', '.join(map(str, values))}" for case, values in groups.items())


def group_of(name: str, override: str | None = None) -> str:
    """The ``--help`` section of flag ``name`` (``override``: the field's own ``group``)."""
    return override or FLAG_GROUPS.get(name, "other")


def help_sections(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One argument group per section, created in :data:`GROUPS` order (argparse hides empty ones)."""
    return {title: parser.add_argument_group(title) for title in GROUPS}


def add_flag(sections: dict[str, argparse._ArgumentGroup], flag: str, **kwargs) -> argparse.Action:
    """``parser.add_argument(flag, **kwargs)`` in the section of the flag's name, with the shared
    :func:`metavar` when it takes a value (plain argparse commands)."""
    name = flag.lstrip("-")
    if kwargs.get("action", "store") == "store" and not kwargs.get("choices"):
        kwargs.setdefault("metavar", metavar(name, kwargs.get("type", str)))
    return sections[group_of(name)].add_argument(flag, **kwargs)
