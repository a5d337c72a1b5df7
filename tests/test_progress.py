"""Progress bars and log lines: a log line never lands on a bar's line in a terminal, plain
lines elsewhere; the retraining's --eval_every / --test_subset."""
from __future__ import annotations

import io
import logging
import re
import sys

import pytest

from fairdarts.run_dir import progress, setup_logger
from fairdarts.train.cli import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--dataset", "synthetic", "--image_size", "8", "--subset", "16", "--batch_size", "8", "--init_channels", "4",
        "--layers", "3", "--device", "cpu", "--no-progress"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_print_above_the_bar_in_a_terminal(monkeypatch, tmp_path):
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    logger = setup_logger(tmp_path, is_main=True, name="fairdarts.test_progress")
    for i in progress(range(3), total=3, desc="valid", enabled=True):
        logger.info("LOGLINE %d", i)
    out = term.getvalue()
    assert re.search(r"valid: .*0/3 \[\d\d:\d\d<", out), out  # a bar with its elapsed<remaining (ETA) field
    lines = list(re.finditer(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d LOGLINE \d\n", out))
    assert len(lines) == 3
    assert all(m.start() == 0 or out[m.start() - 1] in "\r\n" for m in lines), repr(out)  # each on a line of its own
    assert (tmp_path / "log.txt").read_text().count("LOGLINE") == 3
    logging.getLogger("fairdarts.test_progress").handlers.clear()


def test_no_bar_when_output_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    items = [1, 2]
    assert progress(items, total=2, desc="test", enabled=True) is items


def test_eval_every_and_test_subset(tmp_path, monkeypatch):
    from fairdarts.train import trainer

    seen = []
    original = trainer.evaluate_sums

    def counting(model, batches, *args):
        sums = original(model, batches, *args)
        seen.append(int(sums[3]))
        return sums

    monkeypatch.setattr(trainer, "evaluate_sums", counting)
    run = tmp_path / "run"
    assert train_main([*TINY, "--epochs", "3", "--eval_every", "2", "--test_subset", "5", "--save", str(run)]) == 0
    assert seen == [5, 5]  # after epoch 1 and after the last one, 5 test images each
    log = (run / "log.txt").read_text()
    assert "epoch 0 train_loss" in log and "(no test pass: --eval_every 2)" in log
    assert len(re.findall(r"epoch \d test_loss|test_top1 [0-9.]+ test_top5", log)) == 2
    assert (run / "model_best.pt").is_file()
