"""Retraining defaults = the published settings (paper_facts.md), presets, flag rules, one-line errors."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from fairdarts.config import load_config_file, resolve_config
from fairdarts.errors import run_cli
from fairdarts.train.cli import main
from fairdarts.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def resolved(argv: list[str]) -> TrainConfig:
    return resolve_config(TrainConfig, argv, "train.py", "").resolved()


def test_cifar_defaults_are_the_published_setting():
    cfg = resolved([])
    assert (cfg.arch, cfg.dataset, cfg.network) == ("FairDARTS_a", "cifar10", "cifar")
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.learning_rate_min) == (600, 96, 0.025, 0.0)
    assert (cfg.lr_schedule, cfg.momentum, cfg.weight_decay) == ("cosine", 0.9, 3e-4)
    assert (cfg.init_channels, cfg.layers) == (36, 20)
    assert cfg.auxiliary and cfg.auxiliary_weight == 0.4
    assert cfg.cutout and cfg.cutout_length is None  # half the image side: DARTS' 16 px on CIFAR's 32 px
    assert (cfg.drop_path_prob, cfg.grad_clip, cfg.label_smoothing, cfg.auto_aug) == (0.2, 5.0, 0.0, False)


def test_imagenet_switches_network_and_defaults():
    cfg = resolved(["--dataset", "imagenet"])
    assert cfg.network == "imagenet"
    assert (cfg.layers, cfg.init_channels, cfg.epochs, cfg.batch_size) == (14, 48, 250, 128)
    assert (cfg.learning_rate, cfg.lr_schedule, cfg.gamma, cfg.weight_decay) == (0.1, "exponential", 0.97, 3e-5)
    assert (cfg.label_smoothing, cfg.drop_path_prob, cfg.auxiliary_weight, cfg.grad_clip) == (0.1, 0.0, 0.4, 5.0)
    # a flag still wins over the dataset's default
    assert resolved(["--dataset", "imagenet", "--layers", "12"]).layers == 12


@pytest.mark.parametrize("preset,argv",
                         [("train_cifar10.yaml", []), ("train_imagenet.yaml", ["--dataset", "imagenet"])])
def test_yaml_presets_equal_the_defaults(preset, argv):
    from_file = load_config_file(TrainConfig, REPO / "configs" / preset).resolved()
    from_flags = resolved(argv)
    differ = {f.name for f in dataclasses.fields(TrainConfig)
              if getattr(from_file, f.name) != getattr(from_flags, f.name)}
    assert differ <= {"cutout"}, differ  # ImageNet's preset turns cutout off (no effect on folder data)


def test_flags_override_the_config_file():
    cfg = resolved(["--config", str(REPO / "configs/train_cifar10.yaml"), "--epochs", "3", "--no-auxiliary",
                    "--no-cutout"])
    assert (cfg.epochs, cfg.auxiliary, cfg.cutout, cfg.batch_size) == (3, False, False, 96)


@pytest.mark.parametrize("args,message", [
    (["--batch_size", "abc"], "batch_size"),
    (["--bogus_flag", "1"], "bogus_flag"),
    (["--drop_path_prob", "1.5"], "drop_path_prob"),
    (["--arch", "FairDARTS_zz"], "unknown arch"),
    (["--arch", "Genotype(normal=[1,"], "genotype"),
    (["--amp_dtype", "fp8"], "amp_dtype"),
    (["--batch_size", "10", "--accum_steps", "3"], "divisible"),
    (["--resume", "/nonexistent/run"], "resume"),
    (["--parse_method", "darts", "--arch", "FairDARTS_a"], "not a folder"),
])
def test_bad_flags_fail_with_one_line(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [*args, "--save", str(tmp_path / "run")])
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_root_entry_reports_one_line():
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--arch", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown arch") and "Traceback" not in proc.stderr
