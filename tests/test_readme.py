"""README.md stays true: its Python API example runs and prints what its comments say, and
the commands of its "first 10 minutes" walk-through run on Fashion-MNIST."""
from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
FASHION = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.usefixtures("one_thread")


def section_block(title: str, language: str) -> str:
    """The first ``language`` code block after the heading ``title``."""
    start = README.index(f"\n## {title}\n")
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match, f"no {language} block under {title!r}"
    return match.group(1)


def test_api_example_runs_and_prints_what_its_comments_say(tmp_path):
    code = section_block("Python API", "python")
    expected = [line.split("#", 1)[1].strip() for line in code.splitlines()
                if line.startswith("print(") and "#" in line]
    assert len(expected) >= 3
    script = tmp_path / "example.py"
    script.write_text(code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(script), run_name="__main__")
    assert out.getvalue().splitlines() == expected


def walkthrough_commands(runs: Path) -> list[list[str]]:
    """Each command of the walk-through, ``runs/`` moved to a temporary folder."""
    text = section_block("The first 10 minutes (Fashion-MNIST on a CPU)", "bash").replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            argv = [a.replace("runs/", f"{runs}/", 1) if a.startswith("runs/") else a for a in shlex.split(line)]
            assert argv[0] == "python"
            commands.append([sys.executable, *argv[1:]])
    return commands


@pytest.mark.e2e
@pytest.mark.slow
def test_first_ten_minutes_walkthrough_runs(tmp_path):
    if not (FASHION / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found in {FASHION}")
    runs = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    outputs = []
    for argv in walkthrough_commands(runs):
        result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{shlex.join(argv[1:])}\n{result.stderr[-2000:]}"
        outputs.append(result.stdout)
    assert len(outputs) == 6
    log = (runs / "first" / "log.txt").read_text()
    assert "the normal and reduce cells are empty" in log  # what step 3 of the walk-through says
    assert (runs / "first" / "plots" / "alpha_normal.png").is_file()
    assert (runs / "first-train" / "model_best.pt").is_file()
    assert re.search(r"test: top-1 [0-9.]+%.*\(500 images", outputs[-1])
