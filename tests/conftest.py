"""Shared test helpers: the fixture files (tests/fixtures, copied from ../shared), small thread counts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
FAULTS = Path(__file__).resolve().parent / "faults"
COMPAT = FIXTURES / "compat"

torch.set_num_threads(2)

#: Files whose every test is in the slow tier: multi-process searches, the benchmark smoke runs, the
#: native kernels' differential fuzz and their run under the sanitizers.
SLOW_FILES = frozenset({"test_search_ddp.py", "test_benchmarks.py", "test_native_fuzz.py", "test_native_sanitizers.py"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the fault suite, the end-to-end tests and the files in SLOW_FILES in the ``slow`` tier,
    so that ``pytest -m "not slow"`` is the quick check and one rule, not a marker per test, says what is slow."""
    for item in items:
        if FAULTS in item.path.parents or item.path.name in SLOW_FILES or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared, for the tests that check tests/fixtures against the files it was copied from."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared facts folder beside the checkout) is absent")
    return SHARED


def compat_files(name: str) -> tuple[Path, Path]:
    """The official-layout checkpoint ``NAME-C16-L8.tar`` and its reference logits ``.io.pt``.

    The repository keeps two of them (tests/fixtures/compat, a few MB); the other three are read
    from ../shared/compat when it is beside the checkout, and their tests skip otherwise. Every
    layout's keys and shapes are in tests/fixtures/compat/state_dict_shapes.json either way."""
    for folder in (COMPAT, SHARED / "compat"):
        if (folder / f"{name}-C16-L8.tar").is_file():
            return folder / f"{name}-C16-L8.tar", folder / f"{name}-C16-L8.io.pt"
    pytest.skip(f"{name}-C16-L8.tar is kept only in {SHARED / 'compat'}, which is absent")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of search/training runs: on a shared 2-core machine
    two threads per process thrash (up to 30x slower). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``. ``OMP_NUM_THREADS=1`` makes it the
    default ``--threads`` of the commands these tests call, and of their subprocesses."""
    n, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(n)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture
def no_native_kernels(monkeypatch):
    """PyTorch's kernels only for the test (the native CPU kernels switched off), then as before."""
    from fairdarts.search_space import native

    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    yield
    monkeypatch.undo()
    native.reset()
