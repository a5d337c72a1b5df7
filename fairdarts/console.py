"""The installed console scripts (``[project.scripts]`` of pyproject.toml).

Each runs its command's ``main`` through :func:`fairdarts.errors.run_cli`, as the repository
scripts do, so that a user's mistake is one line and exit code 2 under ``fairdarts-train`` as
under ``python train.py`` (a script pointing at ``main`` itself would print a traceback).
A script imports only its own command, when it runs.
"""
from __future__ import annotations

import importlib
from typing import Callable, NoReturn

from fairdarts.errors import run_cli


def _entry(module: str, function: str = "main") -> Callable[[], NoReturn]:
    """A console script's function: ``module.function`` through :func:`run_cli`."""
    def run() -> NoReturn:
        run_cli(getattr(importlib.import_module(module), function))
    run.__name__ = run.__qualname__ = function
    return run


search = _entry("fairdarts.search.cli")
train = _entry("fairdarts.train.cli")
evaluate = _entry("fairdarts.evaluation.cli")
summary = _entry("fairdarts.summary")
visualize = _entry("fairdarts.visualize")
derive = _entry("fairdarts.search.derive_cli")
darts_search = _entry("fairdarts.ablations.cli")
random_search = _entry("fairdarts.ablations.cli", "random_search_main")
doctor = _entry("fairdarts.doctor")
