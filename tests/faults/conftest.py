"""The fork server shared by the faults suite, and the counts it reports at the end."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from .harness import COUNTS, Launcher
from .runs import Kind, ReferenceRuns


@pytest.fixture(scope="session")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    server = Launcher(tmp_path_factory.mktemp("fault-logs"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def reference(launcher: Launcher, tmp_path_factory: pytest.TempPathFactory) -> ReferenceRuns:
    """The uninterrupted run of each kind and its duration, made once: what killed runs must
    reproduce, and the finished run that the disk and divergence tests extend by one epoch."""
    runs: dict[str, tuple[Path, float]] = {}

    def get(kind: Kind) -> tuple[Path, float]:
        if kind.name not in runs:
            run = tmp_path_factory.mktemp("reference") / kind.name
            start = time.monotonic()
            result = launcher.run(kind.entry, kind.argv(run))
            assert result.rc == 0, result.stderr
            runs[kind.name] = run, time.monotonic() - start
        return runs[kind.name]
    return get


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A scratch folder for one test's runs."""
    return tmp_path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not COUNTS:
        return
    terminalreporter.section("faults")
    for key in sorted(COUNTS):
        terminalreporter.write_line(f"{key}: {COUNTS[key]}")
