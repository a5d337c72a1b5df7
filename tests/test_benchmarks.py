"""The benchmark scripts stay runnable: their quick modes on tiny sizes, checked for content
(never for speed: timings are the benchmarks' business, not the tests')."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402

from benchmarks import bench_allocator, bench_depthwise, bench_native_kernels, bench_search_passes  # noqa: E402

# The scripts set the intra-op thread count (--threads 1); one_thread gives it back afterwards.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_search_passes_quick(tmp_path: Path, capsys) -> None:
    out = tmp_path / "passes.json"
    assert bench_search_passes.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["results"][0]
    for key in ("A_s", "W_s", "V_s", "first_order_s", "second_order_s"):
        assert row[key] > 0
    assert row["predicted_ratio"] == (2 * row["W_s"] + row["V_s"] + 2 * row["A_s"]) / (row["A_s"] + row["W_s"])
    assert "floor of any exact implementation" in capsys.readouterr().out


def test_depthwise_quick_gradients_agree(tmp_path: Path) -> None:
    out = tmp_path / "depthwise.json"
    assert bench_depthwise.main(["--quick", "--batch", "2", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == len(bench_depthwise.CASES)
    assert max(r["max_rel_diff"] for r in rows) < 1e-4  # float32, sums regrouped


def test_native_kernels_quick_times_three_equal_variants(tmp_path: Path, capsys) -> None:
    out = tmp_path / "native.json"
    bench_native_kernels.main(["--size", "quick", "--batch", "4", "--repeats", "1", "--out", str(out)])
    row = json.loads(out.read_text())["results"][0]
    assert all(row[f"{v}_cpu_s"] > 0 for v in bench_native_kernels.VARIANTS)
    assert max(row["float64_rel_diff_vs_textbook"].values()) < 1e-10
    assert row["native_vs_pytorch"] == row["pytorch_cpu_s"] / row["native_cpu_s"]
    assert "wrote" in capsys.readouterr().out


def test_allocator_quick_runs_both_variants(tmp_path: Path) -> None:
    out = tmp_path / "allocator.json"
    assert bench_allocator.main(["--quick", "--rounds", "1", "--passes", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == list(bench_allocator.VARIANTS)
    assert all(r["cpu_s"] > 0 and r["minor_faults"] >= 0 and r["passes"] == 1 for r in rows)


def test_vs_textbook_quick_reports_step_and_weight_pass(tmp_path: Path) -> None:
    from benchmarks import bench_vs_textbook

    out = tmp_path / "vs.json"
    assert bench_vs_textbook.main(["--quick", "--batch-sizes", "2", "--repeats", "1", "--threads", "1",
                                   "--algorithms", "fairdarts_1st", "--images", "16", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    ours = next(r for r in result["rows"] if r["impl"] == "ours")
    for key in ("speedup", "speedup_cpu", "weight_speedup", "weight_speedup_cpu", "median_cpu_s", "weight_median_s"):
        assert ours[key] > 0
    assert max(result["equality_rel_err"]["fairdarts_1st"].values()) < 1e-10


def test_cuda_graphs_quick_on_the_cpu_stand_in_equals_eager(tmp_path: Path, capsys) -> None:
    """On the CPU the prepared GPU benchmark runs its capture stand-in: the two runs are equal to
    the bit, with one capture and a replay per step after the warm-up."""
    from benchmarks import bench_cuda_graphs

    out = tmp_path / "graphs.json"
    assert bench_cuda_graphs.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == list(bench_cuda_graphs.DEFAULT_VARIANTS)
    for r in rows:
        assert r["capture"] == "run_eagerly" and r["captures"] == 1 and r["replays"] == r["steps"] - 4
        assert r["max_abs_alpha_diff"] == r["max_abs_weight_diff"] == r["max_abs_loss_diff"] == 0.0
    assert "checks the script, not the speed" in capsys.readouterr().out


def test_hessian_eigen_quick_reports_the_share_of_an_epoch(tmp_path: Path, capsys) -> None:
    from benchmarks import bench_hessian_eigen

    out = tmp_path / "eigen.json"
    assert bench_hessian_eigen.main(["--quick", "--hessian-batches", "1", "--steps", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["size"] == "quick" and row["hessian_batches"] == 1 and 1 <= row["iterations"] <= row["hessian_iters"]
    assert row["share_of_epoch"] == row["eigen_s"] / (row["step_s"] * row["steps_per_epoch"])
    # The default tolerance bounds the error by 1e-2 of the spectral scale; the reference is converged.
    assert row["reference_iterations"] >= row["iterations"] and row["rel_error_vs_reference"] < 1e-2
    assert "share" in capsys.readouterr().out
