"""Run folders: never overwritten, logs appended on resume, quiet non-main ranks, atomic artefacts."""
from __future__ import annotations

import io
import logging
import re

import pytest
import torch

from fairdarts.errors import UserError
from fairdarts.run_dir import (
    MetricsWriter, atomic_write_bytes, atomic_write_text, default_run_name, prepare_run_dir, progress, setup_logger,
)


def test_prepare_creates_and_refuses_to_overwrite(tmp_path):
    run = prepare_run_dir(tmp_path / "a" / "b", resume=False)
    assert run.is_dir() and not any(run.iterdir())  # the writability probe cleans up after itself
    assert prepare_run_dir(run, resume=False) == run  # empty: fine
    (run / "log.txt").write_text("x")
    with pytest.raises(UserError, match=rf"already exists and is not empty; pass --resume {re.escape(str(run))}"):
        prepare_run_dir(run, resume=False)
    assert prepare_run_dir(run, resume=True) == run
    assert (run / "log.txt").read_text() == "x"


def test_unwritable_location_and_non_main_ranks(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the run folder"):
        prepare_run_dir(blocker / "run", resume=False)
    with pytest.raises(UserError, match="is a file"):
        prepare_run_dir(blocker, resume=False)
    assert prepare_run_dir(tmp_path / "other", resume=False, is_main=False) == tmp_path / "other"
    assert not (tmp_path / "other").exists()  # only the main rank creates it


def test_default_run_name():
    assert re.fullmatch(r"runs/search-\d{8}-\d{6}", default_run_name("search"))


def test_logger_appends_on_resume_and_non_main_is_quiet(tmp_path, capsys):
    log = setup_logger(tmp_path, is_main=True, name="fairdarts.test")
    log.info("first run")
    log = setup_logger(tmp_path, is_main=True, name="fairdarts.test")  # a resumed run
    log.info("resumed")
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["first run", "resumed"]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", lines[0])
    assert capsys.readouterr().out.count("resumed") == 1  # handlers replaced, not stacked

    other = tmp_path / "rank1"
    other.mkdir()
    log = setup_logger(other, is_main=False, name="fairdarts.test")
    log.info("hidden")
    log.warning("shown")
    assert capsys.readouterr().out.strip().endswith("shown")
    assert not any(other.iterdir())
    logging.getLogger("fairdarts.test").handlers.clear()


def test_metrics_writer_writes_events_only_when_enabled(tmp_path):
    writer = MetricsWriter(tmp_path / "main")
    writer.add_scalar("loss", 1.0, 0)
    writer.add_histogram("gates", torch.rand(10), 0)
    writer.close()
    assert any("tfevents" in p.name for p in (tmp_path / "main" / "tensorboard").iterdir())
    quiet = MetricsWriter(tmp_path / "rank1", enabled=False)
    quiet.add_scalar("loss", 1.0, 0)
    quiet.close()
    assert not (tmp_path / "rank1").exists()


def test_progress_is_the_plain_iterable_without_a_terminal(monkeypatch):
    items = [1, 2, 3]
    assert progress(items, total=3, desc="epoch 0", enabled=True) is items  # pytest's stderr is no terminal
    monkeypatch.setattr("sys.stderr", type("Tty", (io.StringIO,), {"isatty": lambda self: True})())
    bar = progress(items, total=3, desc="epoch 0", enabled=True)
    assert bar is not items and list(bar) == items
    assert progress(items, total=3, desc="epoch 0", enabled=False) is items


def test_atomic_writes_replace_whole_files(tmp_path):
    atomic_write_text(tmp_path / "genotype.json", "{}\n")
    atomic_write_text(tmp_path / "genotype.json", '{"normal": []}\n')
    atomic_write_bytes(tmp_path / "w.npy", b"\x93NUMPY")
    assert (tmp_path / "genotype.json").read_text() == '{"normal": []}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genotype.json", "w.npy"]
    with pytest.raises(UserError, match="could not write"):
        atomic_write_text(tmp_path / "missing" / "g.json", "{}")
