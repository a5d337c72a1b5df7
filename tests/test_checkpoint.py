"""Checkpoints: atomic saves that survive a full disk, loads that refuse pickled code and
report corrupt files in one line, RNG state that resumes the same random stream."""
from __future__ import annotations

import errno
import os
import pickle
import random
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from fairdarts.checkpoint import load_checkpoint, save_checkpoint
from fairdarts.errors import UserError
from fairdarts.reproducibility import capture_rng_state, restore_rng_state, seed_everything


def sample_state() -> dict:
    return {"epoch": 3, "model": OrderedDict(w=torch.randn(4, 3), b=torch.zeros(3)),
            "history": [(0, 1.5), (1, None)], "config": {"lr": 0.1, "name": "x", "unrolled": True}}


class DiskFull:
    """A file that takes ``limit`` bytes, then fails the way a full disk does."""

    def __init__(self, path: Path, mode: str, limit: int) -> None:
        self.file, self.limit = open(path, mode), limit

    def write(self, data: bytes) -> int:
        self.file.write(data[:self.limit])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> DiskFull:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_round_trip(tmp_path):
    state = sample_state()
    save_checkpoint(state, tmp_path / "checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded["epoch"] == 3 and loaded["history"] == state["history"] and loaded["config"] == state["config"]
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_disk_full_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(10)}, path)
    before = path.read_bytes()
    with pytest.raises(UserError) as exc:
        save_checkpoint({"epoch": 2, "w": torch.zeros(10_000)}, path,
                        opener=lambda p, mode: DiskFull(p, mode, limit=100))
    message = str(exc.value)
    assert "\n" not in message
    assert message == f"could not write {path}: No space left on device; its previous version is intact"
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["epoch"] == 1


@pytest.mark.parametrize("bad,where", [(np.float64(0.5), "state['history'][1]"),
                                       (slice(1, 2), "state['history'][1]"),
                                       ({np.int64(1): 2}, "state['history'][1] key")])
def test_unloadable_values_are_refused_at_save_time(tmp_path, bad, where):
    with pytest.raises(TypeError, match=re.escape(where)):
        save_checkpoint({"history": [1.0, bad]}, tmp_path / "checkpoint.pt")
    assert not any(tmp_path.iterdir())


class Payload:
    """Pickles to a call of os.system: loading it with pickle would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil_raw.pt"
    torch.save({"model": Payload(marker)}, zipped)
    raw.write_bytes(pickle.dumps(Payload(marker), protocol=2))  # the legacy, non-zip format
    for path in (zipped, raw):
        with pytest.raises(UserError) as exc:
            load_checkpoint(path)
        assert "arbitrary Python objects" in str(exc.value) and "not loaded for safety" in str(exc.value)
        assert "\n" not in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("corrupt", ["truncated", "random", "text", "empty"])
def test_corrupt_files_are_one_line_errors(tmp_path, corrupt):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(sample_state(), path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "random": np.random.default_rng(0).bytes(512),
                      "text": b"hello world\n", "empty": b""}[corrupt])
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt): ")
    assert "\n" not in str(exc.value)


def test_missing_file_folder_and_non_dict(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(UserError, match="is a folder"):
        load_checkpoint(tmp_path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")


def draws() -> tuple:
    return random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist()


def test_rng_state_resumes_the_same_stream_through_a_checkpoint(tmp_path):
    seed_everything(7)
    random.gauss(0, 1), np.random.randn()  # leave cached Gaussians in both generators
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = draws()
    draws()
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    assert draws() == expected
