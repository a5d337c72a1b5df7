"""Every command names itself as the user started it: installed console scripts print their own
name in the usage line, and advice names the other commands in the same form (console script,
repository script with the folder typed, or ``python -m``)."""
from __future__ import annotations

import importlib
import sys
import tomllib
import types
from pathlib import Path

import pytest

from fairdarts.errors import EXIT_USER_ERROR
from fairdarts.invocation import COMMANDS, command, prog

REPO = Path(__file__).resolve().parents[1]
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def _entry(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def test_every_console_script_is_a_known_command() -> None:
    assert set(SCRIPTS) == {names.console for names in COMMANDS.values()}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_script_usage_names_itself(script, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/{script}", "--help"])
    with pytest.raises(SystemExit) as exc:
        _entry(SCRIPTS[script])()
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {script} ")


def test_console_script_mistake_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fairdarts-summary", "--arch", "NoSuchGenotype"])
    with pytest.raises(SystemExit) as exc:
        _entry(SCRIPTS["fairdarts-summary"])()
    assert exc.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: unknown arch 'NoSuchGenotype'") and err.count("\n") == 1
    assert "`fairdarts-summary --all`" in err


@pytest.mark.parametrize("argv0, usage, train", [
    ("/venv/bin/fairdarts-search", "fairdarts-search", "fairdarts-train"),
    ("train_search.py", "train_search.py", "python train.py"),
    ("../clone/train_search.py", "../clone/train_search.py", "python ../clone/train.py"),
    ("darts/train_search.py", "darts/train_search.py", "python train.py"),
])
def test_advice_names_the_form_the_user_ran(argv0, usage, train, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [argv0])
    name = "darts-search" if argv0.startswith("darts/") else "search"
    assert prog(name) == usage
    assert command("train") == train


def test_module_form_names_modules(monkeypatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.util.find_spec("fairdarts.summary")
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/any/path/summary.py"])
    assert prog("summary") == "python -m fairdarts.summary"
    assert command("train") == "python -m fairdarts.train.cli"
    assert command("random-search") == "fairdarts-random-search"  # no module of its own


def test_repository_form_falls_back_to_modules(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])
    assert command("derive") == "python -m fairdarts.search.derive_cli"
