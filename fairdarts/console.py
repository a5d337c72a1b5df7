"""The installed console scripts (``[project.scripts]`` of pyproject.toml).

Each runs its command's ``main`` through :func:`fairdarts.errors.run_cli`, as the repository
scripts do, so that a user's mistake is one line and exit code 2 under ``fairdarts-train`` as
under ``python train.py`` (a script pointing at ``main`` itself would print a traceback).
Imports are inside the functions: a script loads only its own command.
"""
from __future__ import annotations

from typing import NoReturn

from fairdarts.errors import run_cli


def search() -> NoReturn:
    from fairdarts.search.cli import main
    run_cli(main)


def train() -> NoReturn:
    from fairdarts.train.cli import main
    run_cli(main)


def evaluate() -> NoReturn:
    from fairdarts.evaluation.cli import main
    run_cli(main)


def summary() -> NoReturn:
    from fairdarts.summary import main
    run_cli(main)


def visualize() -> NoReturn:
    from fairdarts.visualize import main
    run_cli(main)


def derive() -> NoReturn:
    from fairdarts.search.derive_cli import main
    run_cli(main)


def darts_search() -> NoReturn:
    from fairdarts.ablations.cli import main
    run_cli(main)


def random_search() -> NoReturn:
    from fairdarts.ablations.cli import random_search_main
    run_cli(random_search_main)


def doctor() -> NoReturn:
    from fairdarts.doctor import main
    run_cli(main)
