"""Search runs on a tiny synthetic supernet: run-folder outputs, resume after SIGKILL,
re-derivation, and one-line errors for bad flags and configs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import fairdarts
from fairdarts.checkpoint import load_checkpoint
from fairdarts.errors import UserError
from fairdarts.search.cli import main
from fairdarts.search.derive_cli import main as derive_main

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")
TINY = ["--dataset", "synthetic", "--image_size", "8", "--subset", "48", "--batch_size", "8",
        "--init_channels", "4", "--layers", "3", "--device", "cpu", "--report_freq", "1"]


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = _env()
    return subprocess.run([sys.executable, str(REPO / "train_search.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("search") / "run"
    assert main([*TINY, "--epochs", "2", "--max_steps_per_epoch", "2", "--save", str(run),
                 "--parse_method", "darts"]) == 0
    return run


def test_run_folder_has_every_artefact(tiny_run):
    names = {p.relative_to(tiny_run).as_posix() for p in tiny_run.rglob("*") if p.is_file()}
    for expected in ["log.txt", "config.yaml", "genotype.json", "genotype.txt", "normal_weight.npy",
                     "reduce_weight.npy", "alpha_history.npz", "checkpoint.pt", "genotypes/epoch_000.json",
                     "genotypes/epoch_000.txt", "genotypes/epoch_001.json", "genotypes/epoch_001.txt",
                     "plots/alpha_normal.png", "plots/alpha_reduce.png"]:
        assert expected in names, expected
    assert any("tfevents" in n for n in names)
    assert np.load(tiny_run / "normal_weight.npy").shape == (14, 7)
    hist = np.load(tiny_run / "alpha_history.npz")
    assert hist["raw_normal"].shape == (2, 14, 7) and list(hist["epochs"]) == [0, 1]
    np.testing.assert_allclose(hist["gated_reduce"][-1], np.load(tiny_run / "reduce_weight.npy"), rtol=1e-6)
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg["batch_size"] == 8 and cfg["aux_loss_weight"] == 10.0
    assert (tiny_run / "genotype.txt").read_text().startswith("Genotype(normal=[")
    net = fairdarts.build_network(tiny_run, init_channels=4, layers=3)
    assert sum(p.numel() for p in net.parameters()) > 0


def test_derive_cli_rederives_without_searching(tiny_run, tmp_path, capsys):
    out = tmp_path / "g.json"
    assert derive_main([str(tiny_run), "--parse_method", "threshold_edge", "--op_threshold", "0.0",
                        "--out", str(out)]) == 0
    text = capsys.readouterr().out.strip()
    g = fairdarts.get_genotype(out)
    assert text == g.to_text() and g.form == "fairdarts"
    assert len(g.normal) == 28  # threshold 0: the two strongest ops of all 14 edges
    assert derive_main([str(tiny_run / "normal_weight.npy"), "--parse_method", "darts"]) == 0
    assert capsys.readouterr().out.strip() == (tiny_run / "genotype.txt").read_text().strip()


def test_resume_refuses_changed_flags_and_extends_epochs(tiny_run, tmp_path):
    with pytest.raises(UserError, match="--batch_size"):
        main(["--resume", str(tiny_run), "--batch_size", "4"])
    with pytest.raises(UserError, match="--config cannot be combined"):
        main(["--resume", str(tiny_run), "--config", str(REPO / "configs/search_fairdarts_cifar10.yaml")])
    run = tmp_path / "extended"
    shutil.copytree(tiny_run, run)
    assert main(["--resume", str(run), "--epochs", "3"]) == 0
    assert list(np.load(run / "alpha_history.npz")["epochs"]) == [0, 1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 3


@pytest.mark.parametrize("args,message", [
    (["--batch_size", "abc"], "batch_size"),
    (["--gate", "relu"], "gate"),
    (["--bogus_flag", "1"], "bogus_flag"),
    (["--unrolled", "--single_level"], "exclude"),
    (["--primitives", "sep_conv_3x3,warp_op"], "warp_op"),
    (["--resume", "/nonexistent/run"], "resume"),
])
def test_bad_flags_fail_with_one_line(args, message, capsys):
    from fairdarts.errors import run_cli as run
    with pytest.raises(SystemExit) as exc:
        run(main, args)
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err


@pytest.mark.parametrize("content,message", [("bogus_key: 1\n", "bogus_key"), ("epochs: ten\n", "epochs"),
                                             ("- a list\n", "")])
def test_bad_config_file_exits_nonzero_with_one_line(content, message, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    r = run_cli(["--config", str(cfg)], timeout=120)
    err = r.stderr.strip()
    assert r.returncode != 0 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def _alphas(run: Path) -> tuple[np.ndarray, str]:
    hist = np.load(run / "alpha_history.npz")
    return np.concatenate([hist["raw_normal"].ravel(), hist["raw_reduce"].ravel()]), (run / "genotype.txt").read_text()


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path):
    args = [*TINY, "--epochs", "2", "--max_steps_per_epoch", "3", "--parse_method", "darts", "--progress"]
    ref = tmp_path / "ref"
    r = run_cli([*args, "--save", str(ref)])
    assert r.returncode == 0, r.stderr

    killed = tmp_path / "killed"
    env = _env()
    proc = subprocess.Popen([sys.executable, str(REPO / "train_search.py"), *args, "--save", str(killed)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill in the middle of epoch 1: after its first search step was logged.
    deadline = time.time() + 240
    log = killed / "log.txt"
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and "epoch 1 step 001" in log.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 1

    r = run_cli(["--resume", str(killed)])
    assert r.returncode == 0, r.stderr
    ref_alphas, ref_text = _alphas(ref)
    got_alphas, got_text = _alphas(killed)
    assert ref_alphas.shape == got_alphas.shape
    np.testing.assert_allclose(got_alphas, ref_alphas, rtol=0, atol=1e-6)
    assert got_text == ref_text
    assert json.loads((killed / "genotype.json").read_text()) == json.loads((ref / "genotype.json").read_text())
    assert "resumed from" in (killed / "log.txt").read_text()


@pytest.mark.slow
def test_alpha_plots_are_redrawn_every_plot_every_epochs_and_at_the_end(tmp_path, monkeypatch):
    from fairdarts.search import searcher

    drawn: list[int] = []
    real = searcher.plot_alpha_history
    monkeypatch.setattr(searcher, "plot_alpha_history",
                        lambda history, *a, **k: (drawn.append(history.epochs[-1]), real(history, *a, **k))[1])
    run = tmp_path / "run"
    assert main([*TINY, "--epochs", "5", "--max_steps_per_epoch", "1", "--plot_every", "2",
                 "--save", str(run)]) == 0
    assert drawn == [1, 3, 4]  # after epochs 2 and 4, and after the last (5th) one
    assert (run / "plots" / "alpha_normal.png").is_file()
