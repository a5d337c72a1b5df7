"""The summary (FLOPs/params) and visualize command lines."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from fairdarts.search_space import get_genotype
from fairdarts.search.artifacts import edge_labels
from fairdarts.visualize import cell_to_dot


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_summary_json_rows() -> None:
    out = run("-m", "fairdarts.summary", "--arch", "FairDARTS_a", "--json", "--layers", "8", "--init_channels", "16")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["name"] == "FairDARTS_a" and row["flops"] > 0 and row["params"] > row["params_no_aux"] > 0


def test_summary_table_for_a_genotype_file(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text(get_genotype("PDARTS").to_json())
    out = run("-m", "fairdarts.summary", "--arch", str(tmp_path / "g.json"))
    assert out.returncode == 0, out.stderr
    assert "532.2" in out.stdout  # PDARTS: 532M FLOPs published


@pytest.mark.parametrize("args,message", [
    (["--arch", "FairDARTS_z"], "unknown arch"),
    (["--arch", "FairDARTS_a", "--layers", "-1"], "positive"),
    (["--all", "--arch", "FairDARTS_a"], "not allowed"),
    (["--arch", "FairDARTS_a", "--bogus"], "unrecognized"),
])
def test_summary_bad_input_is_one_line(args: list[str], message: str) -> None:
    out = run("-m", "fairdarts.summary", *args)
    assert out.returncode == 2
    assert message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_isolated_nodes_are_grey_in_the_dot_source() -> None:
    dot = cell_to_dot(get_genotype("FairDARTS_c"), reduction=False)
    assert '"1" [shape=circle, fillcolor=gray85' in dot  # node 3 (drawn "1") has no input
    assert dot.count("label=") == 1 + 3 + len(get_genotype("FairDARTS_c").normal)  # title, c_k's, edges


def test_cell_inputs_and_output_are_drawn_with_subscripts() -> None:
    dot = cell_to_dot(get_genotype("FairDARTS_a"), reduction=False)
    for node, sub in (("c_k_2", "k-2"), ("c_k_1", "k-1"), ("c_k", "k")):
        assert f"  {node} [label=<c<SUB>{sub}</SUB>>" in dot
    assert "c_{" not in dot
    assert "nodesep=0.5; ranksep=0.9;" in dot  # room for the stacked op labels of node 0's two inputs


def test_alpha_plot_titles_are_mathtext_subscripts() -> None:
    from matplotlib.mathtext import MathTextParser

    labels = edge_labels(4)
    assert labels[:3] == ["$c_{k-2}$ \u2192 0", "$c_{k-1}$ \u2192 0", "$c_{k-2}$ \u2192 1"]
    parser = MathTextParser("path")
    for label in labels[:2]:
        parser.parse(label.split(" ")[0])  # raises on text that is not valid mathtext


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")
def test_visualize_writes_png_and_svg(tmp_path: Path) -> None:
    out = run("-m", "fairdarts.visualize", "--arch", "FairDARTS_a", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for kind in ("normal", "reduction"):
        assert (tmp_path / f"FairDARTS_a_{kind}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<svg" in (tmp_path / f"FairDARTS_a_{kind}.svg").read_text()


@pytest.mark.parametrize("failure", [BlockingIOError(11, "Resource temporarily unavailable"),
                                     subprocess.TimeoutExpired(["dot"], 120)])
def test_dot_that_cannot_start_is_one_clear_error(tmp_path: Path, monkeypatch, failure: Exception) -> None:
    """A `dot` that cannot be started (no process left to fork: EAGAIN) or hangs is a UserError
    naming the .dot file to render later, not a traceback; a search's end logs it and goes on."""
    from fairdarts import visualize
    from fairdarts.errors import UserError

    def refuse(*args, **kwargs):
        raise failure
    monkeypatch.setattr(visualize.shutil, "which", lambda name: "/usr/bin/dot")
    monkeypatch.setattr(visualize.subprocess, "run", refuse)
    with pytest.raises(UserError, match=r"could not run graphviz's dot .*\.dot files are written"):
        visualize.render_genotype(get_genotype("FairDARTS_a"), tmp_path, "g")
    assert (tmp_path / "g_normal.dot").is_file()
