"""Shared test helpers: where ../shared lives, small thread counts."""
from __future__ import annotations

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
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
