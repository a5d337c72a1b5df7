"""Runs that cannot go on stop with one true line, and run folders are never written through links.

* non-finite loss, weights, alphas or validation loss: the run stops naming the cause and the
  checkpoint its folder keeps (its epoch), or that there is none; no non-finite tensor reaches
  ``checkpoint.pt`` or ``model_best.pt``;
* a full disk: the message is true about the file that failed and about what the folder keeps;
* a ``log.txt``, ``.lock`` or subfolder that is a symbolic link is refused, and so is a log that
  is a FIFO or a hard link; an atomic write replaces a planted link instead of following it.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

import fairdarts.checkpoint as checkpoint_module
from fairdarts.checkpoint import atomic_write, load_checkpoint
from fairdarts.checkpoint_schema import nonfinite_paths
from fairdarts.errors import UserError
from fairdarts.run_dir import MetricsWriter, RunLogHandler
from fairdarts.search import cli as search_cli
from fairdarts.search.searcher import Searcher
from fairdarts.train import trainer as trainer_module
from fairdarts.train.cli import main as train_main

TINY = ["--dataset", "synthetic", "--image_size", "8", "--batch_size", "8", "--device", "cpu", "--report_freq", "100",
        "--seed", "1", "--no-progress", "--max_steps_per_epoch", "2", "--threads", "1"]
SEARCH_ARGS = [*TINY, "--subset", "32", "--init_channels", "2", "--layers", "3",
               "--primitives", "max_pool_3x3,skip_connect,sep_conv_3x3"]
TRAIN_ARGS = [*TINY, "--subset", "16", "--test_subset", "8", "--init_channels", "4", "--layers", "3",
              "--arch", "FairDARTS_a", "--no-auxiliary"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A one-epoch search and retraining, copied by each test that resumes one."""
    root = tmp_path_factory.mktemp("finished")
    assert search_cli.main([*SEARCH_ARGS, "--epochs", "1", "--save", str(root / "search")]) == 0
    assert train_main([*TRAIN_ARGS, "--epochs", "1", "--save", str(root / "train")]) == 0
    return {"search": root / "search", "train": root / "train"}


def _copy(finished: dict[str, Path], kind: str, tmp_path: Path) -> tuple[Path, bytes]:
    run = tmp_path / kind
    shutil.copytree(finished[kind], run)
    return run, (run / "checkpoint.pt").read_bytes()


def _stopped(call) -> str:
    with pytest.raises(UserError) as exc:
        call()
    message = str(exc.value)
    assert "\n" not in message
    return message


# ----- non-finite runs ----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["search", "train"])
def test_a_run_that_diverges_before_its_first_checkpoint_says_none_is_kept(tmp_path, command):
    run = tmp_path / "run"
    args = [*(SEARCH_ARGS if command == "search" else TRAIN_ARGS), "--epochs", "1", "--learning_rate", "1e12",
            "--save", str(run)]
    main = search_cli.main if command == "search" else train_main
    message = _stopped(lambda: main(args))
    assert "the run wrote no checkpoint.pt, so there is nothing to resume" in message, message
    assert "is kept" not in message and "--resume" not in message, message
    assert not (run / "checkpoint.pt").exists() and not (run / "model_best.pt").exists()


class InfiniteAlpha(Searcher):
    """A search whose first alpha becomes infinite in its second epoch while its loss stays finite
    (a sigmoid gate of an infinite alpha is 1)."""

    def train_one_epoch(self, epoch, lr):
        stats = super().train_one_epoch(epoch, lr)
        if epoch == 1:
            with torch.no_grad():
                self.model.arch_parameters()[0].view(-1)[0] = math.inf
        return stats


def test_infinite_alphas_with_a_finite_loss_stop_before_anything_is_written(finished, tmp_path):
    run, before = _copy(finished, "search", tmp_path)
    genotype = (run / "genotype.json").read_bytes()
    message = _stopped(lambda: search_cli.main(["--resume", str(run), "--epochs", "2"], searcher_cls=InfiniteAlpha))
    assert "the state after 2 epochs holds NaN or infinite values in 1 tensors (model.alphas" in message, message
    assert "the run folder keeps checkpoint.pt with 1 epoch done; start again with a lower --learning_rate" in message
    assert f"--resume {run} --skip_nonfinite" in message
    assert (run / "checkpoint.pt").read_bytes() == before and (run / "genotype.json").read_bytes() == genotype


def test_a_nan_validation_loss_stops_the_search(finished, tmp_path, monkeypatch):
    run, before = _copy(finished, "search", tmp_path)
    monkeypatch.setattr(Searcher, "validate", lambda self: (math.nan, 10.0))
    message = _stopped(lambda: search_cli.main(["--resume", str(run), "--epochs", "2"]))
    assert message.startswith("the validation loss became nan at epoch 1: the run stopped; the run folder keeps "
                              "checkpoint.pt with 1 epoch done"), message
    assert (run / "checkpoint.pt").read_bytes() == before


def test_an_infinite_test_loss_stops_the_retraining_and_keeps_both_files(finished, tmp_path, monkeypatch):
    run, before = _copy(finished, "train", tmp_path)
    best = (run / "model_best.pt").read_bytes()
    monkeypatch.setattr(trainer_module, "evaluate_sums",
                        lambda *a, **k: torch.tensor([math.inf, 8.0, 8.0, 8.0], dtype=torch.float64))
    message = _stopped(lambda: train_main(["--resume", str(run), "--epochs", "2"]))
    assert message.startswith("the test loss became inf at epoch 1: the run stopped; the run folder keeps "
                              "checkpoint.pt with 1 epoch done and model_best.pt with 1 epoch done"), message
    assert (run / "checkpoint.pt").read_bytes() == before and (run / "model_best.pt").read_bytes() == best


def test_a_nan_state_never_reaches_a_checkpoint_or_model_best(finished, tmp_path, monkeypatch):
    """A NaN in the state that no loss sees (a momentum buffer): neither file is written."""
    run, before = _copy(finished, "train", tmp_path)
    best = (run / "model_best.pt").read_bytes()
    train_one_epoch = trainer_module.Trainer.train_one_epoch

    def poisoned(self, epoch, lr):
        metrics = train_one_epoch(self, epoch, lr)
        buffer = next(iter(self.optimizer.state.values()))["momentum_buffer"]
        buffer.view(-1)[0] = math.nan
        return metrics

    monkeypatch.setattr(trainer_module.Trainer, "train_one_epoch", poisoned)
    message = _stopped(lambda: train_main(["--resume", str(run), "--epochs", "2"]))
    assert "the state after 2 epochs holds NaN or infinite values in 1 tensors (optimizer.state.0.momentum_buffer)" \
        in message, message
    assert (run / "checkpoint.pt").read_bytes() == before and (run / "model_best.pt").read_bytes() == best
    assert not nonfinite_paths(load_checkpoint(run / "model_best.pt"))


# ----- full disk ----------------------------------------------------------------------------
def _full_disk_at(monkeypatch, name: str) -> None:
    """Every atomic write of a file called ``name`` fails as on a full disk."""
    def write(path, data, opener=open):
        if Path(path).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return atomic_write(path, data, opener)
    monkeypatch.setattr(checkpoint_module, "atomic_write", write)


def test_a_full_disk_at_model_best_says_the_checkpoint_was_written(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _full_disk_at(monkeypatch, "model_best.pt")
    message = _stopped(lambda: train_main([*TRAIN_ARGS, "--epochs", "1", "--save", str(run)]))
    assert message == (f"could not write {run / 'model_best.pt'}: No space left on device; it was not written (none "
                       "existed before): the run stopped; the run folder keeps checkpoint.pt with 1 epoch done; "
                       f"free space, then resume with --resume {run}")
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    monkeypatch.undo()
    assert train_main(["--resume", str(run)]) == 0  # model_best.pt is rebuilt from the checkpoint
    assert load_checkpoint(run / "model_best.pt")["epoch"] == 1
    assert "model_best.pt repaired: it held nothing" in (run / "log.txt").read_text()


def test_a_full_disk_at_the_first_checkpoint_says_there_is_none(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _full_disk_at(monkeypatch, "checkpoint.pt")
    message = _stopped(lambda: train_main([*TRAIN_ARGS, "--epochs", "1", "--save", str(run)]))
    assert message.endswith("it was not written (none existed before): the run stopped; the run wrote no "
                            "checkpoint.pt, so there is nothing to resume; free space, start again"), message


def test_a_full_disk_for_tensorboard_or_the_log_is_one_warning(tmp_path, monkeypatch, caplog, capsys):
    from torch.utils import tensorboard

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class FullAfterOpening:
        """A writer made before the disk filled up: its writes fail."""
        def __init__(self, *args, **kwargs):
            pass
        add_scalar = add_histogram = flush = close = staticmethod(no_space)

    monkeypatch.setattr(tensorboard, "SummaryWriter", FullAfterOpening)
    with caplog.at_level(logging.WARNING, logger="fairdarts"):
        writer = MetricsWriter(tmp_path)
        writer.add_scalar("a", 1.0, 0)
        writer.add_scalar("b", 1.0, 0)
        writer.close()
    assert [r.getMessage() for r in caplog.records] == [
        "could not write the TensorBoard metrics (No space left on device); no more are written"]
    handler = RunLogHandler(tmp_path / "log.txt")
    monkeypatch.setattr(handler.stream, "write", no_space)
    record = logging.LogRecord("fairdarts", logging.INFO, __file__, 1, "line", None, None)
    handler.emit(record)
    handler.emit(record)
    monkeypatch.undo()
    handler.close()
    err = capsys.readouterr().err
    assert err.count("could not write") == 1 and "Traceback" not in err, err


# ----- links in run folders -----------------------------------------------------------------
@pytest.mark.parametrize("name", ["log.txt", ".lock", "tensorboard"])
def test_a_link_in_a_run_folder_is_refused_and_its_target_untouched(finished, tmp_path, name):
    run, before = _copy(finished, "search", tmp_path)
    outside = tmp_path / "outside"
    outside.write_text("a user's own file\n")
    if (run / name).is_dir():
        shutil.rmtree(run / name)
    else:
        (run / name).unlink()
    (run / name).symlink_to(outside)
    message = _stopped(lambda: search_cli.main(["--resume", str(run), "--epochs", "2"]))
    assert f"{name} is a symbolic link (to {outside}); a run never writes through a link" in message, message
    assert outside.read_text() == "a user's own file\n" and (run / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("kind", ["fifo", "hard link"])
def test_a_log_that_is_not_the_runs_own_file_is_refused(finished, tmp_path, kind):
    """A FIFO would block the open for ever; a hard link would append to a user's file."""
    run, before = _copy(finished, "search", tmp_path)
    (run / "log.txt").unlink()
    outside = tmp_path / "outside"
    if kind == "fifo":
        os.mkfifo(run / "log.txt")
    else:
        outside.write_text("mine\n")
        (run / "log.txt").hardlink_to(outside)
    message = _stopped(lambda: search_cli.main(["--resume", str(run), "--epochs", "2"]))
    what = "is not a regular file" if kind == "fifo" else "has other names (hard links)"
    assert f"log.txt {what}; a run writes it in place" in message, message
    assert kind == "fifo" or outside.read_text() == "mine\n"


def test_a_fresh_run_refuses_a_log_link_in_a_reused_folder(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "notes.txt"
    run.mkdir()
    outside.write_text("")  # an empty log.txt is one a run could have left
    (run / "log.txt").symlink_to(outside)
    message = _stopped(lambda: train_main([*TRAIN_ARGS, "--epochs", "1", "--save", str(run)]))
    assert "log.txt is a symbolic link" in message and outside.read_text() == ""


def test_an_atomic_write_replaces_a_planted_link_instead_of_following_it(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    target = tmp_path / "run" / "genotype.json"
    target.parent.mkdir()
    (target.parent / f".genotype.json.tmp-{os.getpid()}").symlink_to(outside)  # the temporary file's name
    atomic_write(target, b"{}")
    assert target.read_bytes() == b"{}" and outside.read_text() == "keep"
    target.unlink()
    target.symlink_to(outside)  # the file itself
    atomic_write(target, b"[]")
    assert not target.is_symlink() and target.read_bytes() == b"[]" and outside.read_text() == "keep"
