"""Retraining runs on a tiny synthetic network: run-folder outputs, the checkpoint that
evaluate.py reads alone, --arch from a search folder, exact resume after SIGKILL, and the
2-process DDP run equal to the 1-process run."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import fairdarts
from fairdarts.checkpoint import load_checkpoint
from fairdarts.errors import UserError
from fairdarts.evaluation.cli import main as evaluate_main
from fairdarts.train.cli import main
from fairdarts.train.config import TrainConfig
from fairdarts.train.trainer import resolve_arch

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--image_size", "8", "--subset", "32", "--batch_size", "8",
        "--init_channels", "4", "--layers", "3", "--device", "cpu", "--report_freq", "2", "--seed", "1",
        "--cutout_length", "3"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


TEARDOWN_ABORT = "terminate called without an active exception"


def _torchrun_train(args: list[str], save: Path) -> subprocess.CompletedProcess:
    """``train.py`` under torchrun with 2 CPU processes (gloo)."""
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "train.py"), *args, "--save", str(save)], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)


def weights(run: Path, name: str = "checkpoint.pt", params_only: bool = False) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / name)["state_dict"]
    if params_only:
        net = fairdarts.build_network("FairDARTS_a", 4, 3, auxiliary=True)
        names = {k for k, _ in net.named_parameters()}
        return {k: v for k, v in state.items() if k in names}
    return state


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train") / "run"
    assert main([*TINY, "--epochs", "2", "--save", str(run)]) == 0
    return run


def test_run_folder_and_checkpoint_contents(tiny_run):
    names = {p.relative_to(tiny_run).as_posix() for p in tiny_run.rglob("*") if p.is_file()}
    assert {"log.txt", "config.yaml", "checkpoint.pt", "model_best.pt"} <= names
    assert any("tfevents" in n for n in names)
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["epochs"] == 2 and cfg["init_channels"] == 4 and cfg["drop_path_prob"] == 0.2  # resolved defaults saved
    ckpt = load_checkpoint(tiny_run / "checkpoint.pt")
    assert ckpt["epoch"] == 2
    assert ckpt["genotype"] == fairdarts.get_genotype("FairDARTS_a").to_dict()
    assert ckpt["network"]["init_channels"] == 4 and ckpt["network"]["layers"] == 3 and ckpt["network"]["auxiliary"]
    assert ckpt["dataset"]["name"] == "synthetic"
    assert any(k.startswith("auxiliary_head.") for k in ckpt["state_dict"])
    assert ckpt["metrics"]["drop_path_prob"] == pytest.approx(0.1)  # 0.2 * epoch 1 / 2 epochs
    log = (tiny_run / "log.txt").read_text()
    assert "drop_path_prob 0.0000" in log and "test_top1" in log


def test_evaluate_needs_only_the_checkpoint(tiny_run, capsys, tmp_path):
    assert evaluate_main(["--model_path", str(tiny_run / "model_best.pt"), "--device", "cpu", "--subset", "40",
                          "--per_class", "--confusion", str(tmp_path / "cm.png")]) == 0
    out = capsys.readouterr().out
    assert out.index("FLOPs") < out.index("top-1") and "images/s" in out and "class 0:" in out
    assert (tmp_path / "cm.png").stat().st_size > 0
    before = torch.get_num_threads()
    try:
        assert evaluate_main(["--model_path", str(tiny_run / "model_best.pt"), "--device", "cpu", "--subset", "8",
                              "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(before)
    assert "images/s, 1 CPU thread)" in capsys.readouterr().out  # the singular for one


def test_resume_refuses_changed_flags(tiny_run):
    with pytest.raises(UserError, match="--learning_rate"):
        main(["--resume", str(tiny_run), "--learning_rate", "0.1"])


def test_arch_from_a_search_run_folder(tmp_path):
    g = fairdarts.get_genotype("FairDARTS_b")
    (tmp_path / "genotype.json").write_text(g.to_json())
    cfg = TrainConfig(arch=str(tmp_path))
    assert resolve_arch(cfg) == g
    rng = np.random.default_rng(0)
    for name in ("normal_weight.npy", "reduce_weight.npy"):
        np.save(tmp_path / name, rng.uniform(size=(14, 7)).astype(np.float32))
    derived = resolve_arch(TrainConfig(arch=str(tmp_path), parse_method="darts"))
    assert derived.form == "darts" and len(derived.normal) == 8


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_unbroken_run(tmp_path):
    """Kill a training subprocess after its 2nd epoch checkpoint, resume, compare with an unbroken
    run. Drop path (0.2, ramped), crop/flip and cutout are on: all of their randomness is restored."""
    args = [*TINY, "--epochs", "4", "--drop_path_prob", "0.2"]
    whole = tmp_path / "whole"
    assert main([*args, "--save", str(whole)]) == 0

    broken = tmp_path / "broken"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args, "--save", str(broken)], cwd=REPO,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            ckpt = broken / "checkpoint.pt"
            if ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = load_checkpoint(broken / "checkpoint.pt")["epoch"]
    assert 2 <= killed_at < 4
    assert main(["--resume", str(broken)]) == 0
    assert load_checkpoint(broken / "checkpoint.pt")["epoch"] == 4
    assert_same(weights(broken), weights(whole), atol=1e-6)
    assert "resumed from" in (broken / "log.txt").read_text()


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    """2 gloo processes with global batch 8 (4 per rank) end with the same weights as 1 process
    with batch 8 split into 2 micro-batches of 4 (``--accum_steps 2``).

    Why this is exact: BatchNorm in training mode normalises over the samples it sees, so a rank
    of 4 and a micro-batch of 4 compute the same statistics when they hold the same samples; the
    loader gives rank r the r-th half of each global batch, ``--accum_steps`` splits the batch the
    same way, and both average the two halves' gradients. CPU SyncBatchNorm does not exist, hence
    micro-batches rather than one batch of 8. Randomness is off (``--no-augment --no-cutout``,
    drop path 0) because each rank draws its own. BatchNorm running statistics are not compared:
    DDP keeps rank 0's, accumulation updates them per micro-batch; they do not enter training.
    """
    args = [*TINY, "--epochs", "2", "--drop_path_prob", "0", "--no-augment", "--no-cutout"]
    one = tmp_path / "one"
    assert main([*args, "--accum_steps", "2", "--save", str(one)]) == 0
    two = tmp_path / "two"
    proc = _torchrun_train(args, two)
    if proc.returncode != 0 and TEARDOWN_ABORT in proc.stderr:
        # A rank aborted in C++ (a joinable std::thread destroyed) in 2 of ~8 full CI runs on this
        # 2-core machine, never in isolation; the run is repeated once in a fresh folder so the
        # equality below is still checked, and any other failure still fails here.
        two = tmp_path / "two_again"
        proc = _torchrun_train(args, two)
    # A rank's own message (e.g. what a C++ abort printed) comes before torchrun's summary.
    assert proc.returncode == 0, proc.stderr[:3000] + "\n...\n" + proc.stderr[-1500:]
    assert_same(weights(two, params_only=True), weights(one, params_only=True), atol=1e-5)
    m1, m2 = (load_checkpoint(r / "checkpoint.pt")["metrics"] for r in (one, two))
    assert m1["train_loss"] == pytest.approx(m2["train_loss"], rel=1e-5)  # metrics all-reduced over ranks


def test_default_run_folder_is_runs_train_timestamp(tmp_path, monkeypatch):
    """Regression: without --save the folder was runs/runs/train-<timestamp>."""
    monkeypatch.chdir(tmp_path)
    assert main([*TINY, "--epochs", "1", "--max_steps_per_epoch", "1"]) == 0
    made = [p.relative_to(tmp_path).as_posix() for p in (tmp_path / "runs").iterdir()]
    assert len(made) == 1 and re.fullmatch(r"runs/train-\d{8}-\d{6}", made[0]), made
    assert (tmp_path / made[0] / "checkpoint.pt").is_file()
