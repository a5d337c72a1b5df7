"""Shared test helpers: the fixture files (tests/fixtures, copied from ../shared or rebuilt from
a recipe; tests/fixtures/README.md), small thread counts."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping

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


#: What tests/fixtures holds and where it came from: the sha256 of each copied file, and the
#: state digest of each official-layout checkpoint that is rebuilt instead of kept.
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
#: How the official-layout checkpoints were made (tests/fixtures/compat/README.md): weights
#: initialised under torch.manual_seed(0), then BatchNorm statistics from 3 training-mode
#: passes of torch.randn(8, 3, 32, 32) drawn next from the same generator.
REBUILD_SEED, REBUILD_PASSES, REBUILD_BATCH = 0, 3, 8


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict's keys, dtypes, shapes and values, in order (no file format in it)."""
    h = hashlib.sha256()
    for key, tensor in state.items():
        h.update(f"{key}:{tensor.dtype}:{list(tensor.shape)};".encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def rebuild_official_checkpoint(name: str) -> dict:
    """The official-layout checkpoint of genotype ``name`` (16 channels, 8 cells), made again by
    its recipe; :func:`compat_files` checks it against the official file's recorded digest."""
    import fairdarts

    torch.manual_seed(REBUILD_SEED)
    net = fairdarts.build_network(name, init_channels=16, layers=8, num_classes=10, auxiliary=True)
    net.train()
    with torch.no_grad():
        for _ in range(REBUILD_PASSES):
            net(torch.randn(REBUILD_BATCH, 3, 32, 32))
    return {"state_dict": net.state_dict(), "epoch": 1, "best_acc_top1": 0.0}


@pytest.fixture(scope="session")
def compat_files(tmp_path_factory):
    """``compat_files(NAME)``: the official-layout checkpoint ``NAME-C16-L8.tar`` and its reference
    logits ``.io.pt``. The repository keeps two checkpoints (about 3 MB each) and every logits
    file; the other three checkpoints are rebuilt once per session, and used only when their
    state digest is the official file's (tests/fixtures/manifest.json)."""
    rebuilt = tmp_path_factory.mktemp("compat")

    def files(name: str) -> tuple[Path, Path]:
        io = COMPAT / f"{name}-C16-L8.io.pt"
        tar = COMPAT / f"{name}-C16-L8.tar"
        if tar.is_file():
            return tar, io
        tar = rebuilt / tar.name
        if not tar.is_file():
            checkpoint = rebuild_official_checkpoint(name)
            digest = state_digest(checkpoint["state_dict"])
            assert digest == MANIFEST["rebuilt"][name]["state_sha256"], \
                f"the rebuilt {name} checkpoint is not the official one (see tests/fixtures/README.md)"
            torch.save(checkpoint, tar)
        return tar, io
    return files


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
