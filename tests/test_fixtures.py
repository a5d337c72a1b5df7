"""tests/fixtures is what it says it is (tests/fixtures/manifest.json): each copied file has the
recorded sha256 and each rebuilt official checkpoint the official file's state digest, on a
clone alone; where ../shared lies beside the checkout, its files are checked against the same
records too."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from conftest import FIXTURES, MANIFEST, SHARED, state_digest


def _source(entry: dict) -> Path | None:
    """The file in ../shared that ``entry`` was taken from, or None where ../shared is absent."""
    path = SHARED.parent / entry["source"]
    return path if SHARED.is_dir() else None


@pytest.mark.parametrize("name", sorted(MANIFEST["copies"]))
def test_copied_fixture_has_its_recorded_digest(name: str) -> None:
    entry = MANIFEST["copies"][name]
    assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == entry["sha256"]
    source = _source(entry)
    if source is not None:
        assert hashlib.sha256(source.read_bytes()).hexdigest() == entry["sha256"], source


@pytest.mark.parametrize("name", sorted(MANIFEST["rebuilt"]))
def test_rebuilt_checkpoint_is_the_official_one(name: str, compat_files) -> None:
    entry = MANIFEST["rebuilt"][name]
    rebuilt = torch.load(compat_files(name)[0], weights_only=True)
    assert state_digest(rebuilt["state_dict"]) == entry["state_sha256"]
    assert (rebuilt["epoch"], rebuilt["best_acc_top1"]) == (1, 0.0)
    source = _source(entry)
    if source is not None:
        official = torch.load(source, weights_only=True)
        assert state_digest(official["state_dict"]) == entry["state_sha256"], source
        assert {k: v for k, v in official.items() if k != "state_dict"} == {"epoch": 1, "best_acc_top1": 0.0}


def test_every_fixture_file_is_recorded() -> None:
    """A file added to tests/fixtures without a manifest entry (and a README line) fails here."""
    recorded = set(MANIFEST["copies"]) | {"manifest.json", "README.md", "compat/state_dict_shapes.json"}
    present = {str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("**/*") if p.is_file()
               and "legacy_runs" not in p.parts}
    assert present == recorded
