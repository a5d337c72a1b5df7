"""The config mechanism: precedence, flag types, YAML checks, one-line errors."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from conftest import REPO
from fairdarts.config import build_parser, field_help, load_config_file, resolve_config, save_config
from fairdarts.errors import UserError, run_cli


@dataclass
class Toy:
    batch_size: int = field_help(64, "batch size", low=1)
    learning_rate: float = field_help(0.025, "learning rate", low=0.0, low_open=True)
    train_portion: float = field_help(0.5, "weight share", low=0.0, high=1.0, low_open=True, high_open=True)
    gate: str = field_help("sigmoid", "gate", choices=("sigmoid", "softmax"))
    mode: Literal["fast", "exact"] = field_help("fast", "mode")
    unrolled: bool = field_help(False, "second order")
    progress: bool = field_help(True, "progress bar")
    subset: int | None = field_help(None, "first N images", low=2)
    save: str | None = field_help(None, "run folder")
    gpus: list[int] = field_help([0], "GPU ids", low=0)
    tags: list[str] = field_help(["a"], "tags")

    def validate(self) -> None:
        if self.unrolled and self.mode == "exact" and self.batch_size > 100:
            raise UserError("--unrolled with --mode exact needs --batch_size <= 100")


def resolve(argv: list[str]) -> Toy:
    return resolve_config(Toy, argv, "toy", "a toy command")


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "preset.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_yaml_and_flags_in_that_order(tmp_path):
    assert resolve([]) == Toy()
    preset = write_yaml(tmp_path, """
        batch_size: 32
        learning_rate: 1    # an int is fine for a float
        gate: softmax
    """)
    cfg = resolve(["--config", str(preset), "--batch_size", "16"])
    assert (cfg.batch_size, cfg.learning_rate, cfg.gate) == (16, 1.0, "softmax")
    assert isinstance(cfg.learning_rate, float)
    assert resolve(["--batch_size", "16", "--config", str(preset)]).batch_size == 16  # flags win in any order


def test_bool_flags_turn_on_and_off(tmp_path):
    assert resolve(["--unrolled"]).unrolled is True
    assert resolve(["--no-progress"]).progress is False
    preset = write_yaml(tmp_path, "unrolled: true\n")
    assert resolve(["--config", str(preset), "--no-unrolled"]).unrolled is False


def test_literal_list_and_optional_fields(tmp_path):
    cfg = resolve(["--mode", "exact", "--gpus", "0", "1", "--tags", "x", "y", "--subset", "100", "--save", "r"])
    assert (cfg.mode, cfg.gpus, cfg.tags, cfg.subset, cfg.save) == ("exact", [0, 1], ["x", "y"], 100, "r")
    preset = write_yaml(tmp_path, "subset: 10\ngpus: [2, 3]\n")
    assert resolve(["--config", str(preset), "--subset", "none"]).subset is None
    assert load_config_file(Toy, preset).gpus == [2, 3]
    assert Toy().gpus is not Toy().gpus  # list defaults are not shared between instances


@pytest.mark.parametrize("text,message", [
    ("bacth_size: 3\n", "unknown option 'bacth_size' (did you mean 'batch_size'?)"),
    ("learning_rate: abc\n", "learning_rate: expected float, got 'abc'"),
    ("batch_size: 3.5\n", "batch_size: expected int, got 3.5"),
    ("unrolled: 1\n", "unrolled: expected bool, got 1"),
    ("batch_size: null\n", "batch_size: expected int, got None"),
    ("gpus: 3\n", "gpus: expected list of int, got 3"),
    ("train_portion: 1.5\n", "train_portion must be in (0, 1), got 1.5"),
    ("gate: relu\n", "gate must be one of sigmoid, softmax, got 'relu'"),
    ("mode: slow\n", "mode must be one of fast, exact, got 'slow'"),
    ("gpus: [0, -1]\n", "gpus must be >= 0, got -1"),
    ("subset: 1\n", "subset must be >= 2, got 1"),
    ("- a list\n", "must hold a mapping of option: value, got a list"),
    ("batch_size: [1\n", "is not valid YAML"),
    ("unrolled: true\nmode: exact\nbatch_size: 128\n", "needs --batch_size <= 100"),
])
def test_bad_yaml_is_one_user_error(tmp_path, text, message):
    preset = write_yaml(tmp_path, text)
    with pytest.raises(UserError) as exc:
        resolve(["--config", str(preset)])
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_flag_values_are_range_checked_and_missing_files_reported():
    with pytest.raises(UserError, match=r"learning_rate must be > 0, got 0.0"):
        resolve(["--learning_rate", "0"])
    with pytest.raises(UserError, match="not found"):
        resolve(["--config", "/nonexistent/preset.yaml"])


def test_yaml_reads_exponents_without_a_dot(tmp_path):
    # PyYAML (YAML 1.1) reads 3e-4 as a string; it is still the number it spells.
    assert resolve(["--config", str(write_yaml(tmp_path, "learning_rate: 3e-4\n"))]).learning_rate == 3e-4


def test_save_and_load_round_trip(tmp_path):
    cfg = resolve(["--batch_size", "8", "--unrolled", "--gpus", "1", "2", "--learning_rate", "3e-4"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["batch_size"] == 8
    assert load_config_file(Toy, tmp_path / "config.yaml") == cfg
    assert resolve(["--config", str(tmp_path / "config.yaml")]) == cfg


def test_help_lists_every_field_with_its_default():
    text = build_parser(Toy, "toy", "a toy command").format_help()
    for flag in ["--batch_size", "--unrolled, --no-unrolled", "--config FILE", "(default: 64)"]:
        assert flag in text


@pytest.mark.parametrize("args,message", [
    (["--bogus_flag", "1"], "error: unrecognized arguments: --bogus_flag 1 (see --help)"),
    (["--batch", "3"], "error: unrecognized arguments: --batch 3"),  # no prefix abbreviations
    (["--batch_size", "abc"], "error: argument --batch_size: invalid int value: 'abc'"),
    (["--gate", "relu"], "error: argument --gate: invalid choice: 'relu'"),
    (["--train_portion", "2"], "error: train_portion must be in (0, 1), got 2.0"),
])
def test_cli_errors_are_one_line_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda argv: resolve(argv) and 0, args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and err.startswith(message), err


def test_a_real_process_prints_one_line_and_no_traceback():
    code = textwrap.dedent("""
        from dataclasses import dataclass
        from fairdarts.config import field_help, resolve_config
        from fairdarts.errors import run_cli

        @dataclass
        class Cfg:
            epochs: int = field_help(1, "epochs", low=1)

        run_cli(lambda argv: resolve_config(Cfg, argv, "prog", "demo") and 0, ["--epoch", "3"])
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines() == ["error: unrecognized arguments: --epoch 3 (see --help)"]
