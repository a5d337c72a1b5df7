"""User-facing errors: a mistake of the user's is one line on stderr and exit code 2, never a traceback.

Every command line ends in :func:`run_cli`::

    if __name__ == "__main__":
        run_cli(main)

Library code raises :class:`UserError` for anything the user can fix (a bad flag, an unknown
genotype, missing data, a corrupt checkpoint); genuine bugs still surface with their traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn

EXIT_USER_ERROR = 2  # the exit code argparse uses for bad flags: one code for every user mistake
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class UserError(Exception):
    """A mistake of the user's (bad flag, missing data, bad file): printed as one line, exit non-zero."""


def one_line(text: object) -> str:
    """``text`` with its lines joined, so that a message never spans several lines of stderr."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def counted(n: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``: a count in a message, with the noun's plural when it needs one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> NoReturn:
    """Run ``main(argv)`` and exit with its code; a :class:`UserError` becomes ``error: <message>``."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {one_line(exc) or 'invalid input'}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or 0)


class CLIParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (argparse prints the whole usage first) and
    that refuses abbreviated flags, so that a mistyped ``--epoch`` is an error, not ``--epochs``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {one_line(message)} (see --help)\n")


def finite_float(text: str) -> float:
    """The argparse ``type`` of a float flag of the plain-argparse commands: NaN and infinities are
    refused like other bad numbers (the dataclass commands check theirs in :mod:`fairdarts.config`)."""
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value
