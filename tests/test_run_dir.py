"""Run folders: never overwritten, locked, reusable after a run that died before its first checkpoint,
logs appended on resume, quiet non-main ranks, atomic artefacts."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from fairdarts.config import save_config
from fairdarts.errors import UserError
from fairdarts.run_dir import (
    LOCK, MetricsWriter, atomic_write_bytes, atomic_write_text, claim_run_dir, default_run_name, progress,
    run_folder_state, setup_logger,
)
from fairdarts.train.config import TrainConfig


def claim(save, resume, is_main=True):
    """:func:`claim_run_dir` with the lock released at once: the folder it made or reopened."""
    run, lock, _ = claim_run_dir(save, resume, is_main)
    if lock is not None:
        lock.release()
    return run


def test_prepare_creates_and_refuses_to_overwrite(tmp_path):
    run = claim(tmp_path / "a" / "b", resume=False)
    assert run.is_dir() and [p.name for p in run.iterdir()] == [LOCK]  # the probe cleans up; the lock file stays
    assert claim(run, resume=False) == run  # empty: fine
    (run / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(UserError, match=rf"already holds a run \(checkpoint.pt\); pass --resume {re.escape(str(run))}"):
        claim(run, resume=False)
    assert claim(run, resume=True) == run
    assert (run / "checkpoint.pt").read_bytes() == b"x"


def test_a_folder_of_other_files_is_refused_untouched(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "log.txt").write_text("my notes\n")  # not a log of ours
    (folder / "images").mkdir()
    with pytest.raises(UserError, match=r"holds files that are not a run's \(images, log.txt\).*is reused"):
        claim(folder, resume=False)
    assert sorted(p.name for p in folder.iterdir()) == ["images", "log.txt"]  # not even a lock file


def test_a_run_that_died_before_its_first_checkpoint_leaves_a_reusable_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_config(TrainConfig(save=str(run)), run / "config.yaml")
    (run / "log.txt").write_text("2024-01-01 00:00:00 train config: ...\n")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"e")
    (run / ".checkpoint.pt.tmp-123").write_bytes(b"half")
    assert run_folder_state(run)[0] == "dead"
    path, lock, note = claim_run_dir(run, resume=False)
    try:
        assert "reusing run folder" in note and "before its first checkpoint" in note
        assert sorted(p.name for p in run.iterdir()) == [LOCK, "log.txt"]  # the log is kept, the rest removed
    finally:
        lock.release()
    (run / "notes.md").write_text("mine")
    assert run_folder_state(run) == ("foreign", ["notes.md"])


def test_the_lock_keeps_a_second_writer_out_and_dies_with_its_holder(tmp_path):
    run = tmp_path / "run"
    path, lock, _ = claim_run_dir(run, resume=False)
    try:
        with pytest.raises(UserError, match=rf"in use by another run \(PID {os.getpid()}\)"):
            claim_run_dir(run, resume=True)
        with pytest.raises(UserError, match="in use by another run"):
            claim_run_dir(run, resume=False)
    finally:
        lock.release()
    # a holder killed with SIGKILL: the kernel drops its lock, the next run takes it over
    code = (f"import os, time, fcntl; fd = os.open({str(run / LOCK)!r}, os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"PID {holder.pid}"):
            claim_run_dir(run, resume=True)
    finally:
        holder.kill()
        holder.wait()
    _, lock, note = claim_run_dir(run, resume=True)
    try:
        assert note == f"the lock of PID {holder.pid}, which no longer runs, was taken over"
        assert (run / LOCK).read_text().strip() == str(os.getpid())
    finally:
        lock.release()


def test_unwritable_location_and_non_main_ranks(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write the run folder"):
        claim(blocker / "run", resume=False)
    with pytest.raises(UserError, match="is a file"):
        claim(blocker, resume=False)
    assert claim(tmp_path / "other", resume=False, is_main=False) == tmp_path / "other"
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
