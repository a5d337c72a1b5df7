"""No eval()/exec() and no torch.load without weights_only=True anywhere in the shipped code."""
from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

SHIPPED = ["fairdarts", "darts", "scripts", "benchmarks"]
ROOT_SCRIPTS = ["train_search.py", "train.py", "evaluate.py"]
EVAL_CALL = re.compile(r"(?<![\w.])(eval|exec)\s*\(")


def _sources() -> list[Path]:
    files = [p for d in SHIPPED if (REPO / d).is_dir() for p in (REPO / d).rglob("*.py")]
    return files + [REPO / f for f in ROOT_SCRIPTS if (REPO / f).is_file()]


def eval_lines(text: str) -> list[int]:
    """Line numbers that call eval( or exec( outside comments."""
    return [i for i, line in enumerate(text.splitlines(), 1) if EVAL_CALL.search(line.split("#")[0])]


def unsafe_load_lines(text: str) -> list[int]:
    """Line numbers of torch.load( calls whose argument list lacks weights_only=True."""
    lines = []
    for match in re.finditer(r"torch\.load\(", text):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        if "weights_only=True" not in text[match.start():end + 1]:
            lines.append(text[:match.start()].count("\n") + 1)
    return lines


def test_the_checks_find_offenders() -> None:
    bad = "import torch\nx = torch.load(\n  path, map_location='cpu')\ny = eval(s)\nz = obj.eval()\n"
    assert eval_lines(bad) == [4]
    assert unsafe_load_lines(bad) == [2]
    assert unsafe_load_lines("torch.load(p, map_location=f(x), weights_only=True)") == []


def test_no_eval_or_exec_in_shipped_code() -> None:
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in _sources() for n in eval_lines(p.read_text())]
    assert not offenders, offenders


def test_every_torch_load_uses_weights_only() -> None:
    offenders = [f"{p.relative_to(REPO)}:{n}" for p in _sources() for n in unsafe_load_lines(p.read_text())]
    assert not offenders, offenders
