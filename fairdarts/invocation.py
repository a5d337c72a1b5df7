"""How the user started this process, so that usage lines and advice name the command they ran.

Every command exists in up to three forms: an installed console script (``fairdarts-train``), a
script of the repository checkout (``python train.py``) and a module (``python -m
fairdarts.train.cli``). A pip user has only the first; someone in a clone may use any. The form is
read once per call from how this process started, and :func:`command` spells any command (the
one running, or the one an advice points to) in that same form, with the same folder prefix as
typed (``python ../fairdarts/train_search.py`` -> ``python ../fairdarts/train.py``).
A process that is none of these (a library call, a test) gets the repository scripts when a
checkout lies beside the package, else the console scripts.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Form = Literal["console", "path", "module"]
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Names:
    """One command's names: console script, repository script (if any), module (if any)."""
    console: str
    path: str | None = None
    module: str | None = None


COMMANDS: dict[str, Names] = {
    "search": Names("fairdarts-search", "train_search.py", "fairdarts.search.cli"),
    "train": Names("fairdarts-train", "train.py", "fairdarts.train.cli"),
    "evaluate": Names("fairdarts-evaluate", "evaluate.py", "fairdarts.evaluation.cli"),
    "summary": Names("fairdarts-summary", module="fairdarts.summary"),
    "visualize": Names("fairdarts-visualize", module="fairdarts.visualize"),
    "derive": Names("fairdarts-derive", module="fairdarts.search.derive_cli"),
    "doctor": Names("fairdarts-doctor", module="fairdarts.doctor"),
    "darts-search": Names("fairdarts-darts-search", "darts/train_search.py", "fairdarts.ablations.cli"),
    "random-search": Names("fairdarts-random-search", "darts/random_search.py"),
}


@dataclass(frozen=True)
class Invocation:
    """The form this process was started in; ``prefix``: the folder typed before a repository script."""
    form: Form
    prefix: str = ""


def _main_module() -> str | None:
    """The module ``python -m`` ran, or None (``__main__.__spec__`` is set only under ``-m``)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None)


def invocation() -> Invocation:
    """How this process started: ``-m`` one of our modules, a console script, a repository script."""
    if _main_module() in {n.module for n in COMMANDS.values() if n.module}:
        return Invocation("module")
    typed = sys.argv[0] if sys.argv else ""
    if os.path.basename(typed).removesuffix(".exe") in {n.console for n in COMMANDS.values()}:
        return Invocation("console")
    for names in sorted(COMMANDS.values(), key=lambda n: -len(n.path or "")):  # darts/train_search.py first
        if names.path and typed.replace(os.sep, "/").endswith(names.path):
            prefix = typed[:len(typed) - len(names.path)]
            if prefix == "" or prefix.endswith(("/", os.sep)):
                return Invocation("path", prefix)
    return Invocation("path") if (REPO / "train.py").is_file() else Invocation("console")


def _spell(names: Names, how: Invocation) -> tuple[str, str]:
    """(usage name, full command) of ``names`` in form ``how``, falling back to module, then console script."""
    if how.form == "path" and names.path:
        path = how.prefix + names.path
        return path, f"python {path}"
    if how.form in ("path", "module") and names.module:
        return f"python -m {names.module}", f"python -m {names.module}"
    return names.console, names.console


def command(name: str) -> str:
    """How to start command ``name`` (a key of :data:`COMMANDS`) the way the user started this
    one, for advice: ``fairdarts-train``, ``python train.py`` or ``python -m fairdarts.train.cli``."""
    return _spell(COMMANDS[name], invocation())[1]


def prog(name: str) -> str:
    """The usage-line name of command ``name`` as the user started it: ``fairdarts-search``,
    ``darts/train_search.py`` (the script as typed) or ``python -m fairdarts.summary``."""
    return _spell(COMMANDS[name], invocation())[0]
