"""Shared test helpers: where ../shared lives, small thread counts."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} (the shared facts folder beside the checkout) is absent")
    return SHARED


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
