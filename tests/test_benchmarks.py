"""The benchmark scripts stay runnable: their quick modes on tiny sizes, checked for content
(never for speed: timings are the benchmarks' business, not the tests')."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402

# The scripts set the intra-op thread count (--threads 1); one_thread gives it back afterwards.
pytestmark = pytest.mark.usefixtures("one_thread")


def test_vs_textbook_quick_reports_every_implementation_and_the_breakdown(tmp_path: Path, capsys) -> None:
    """One run answers the whole question: ours, ours on PyTorch's kernels and the textbook
    (equal numbers first), the memory subprocesses with glibc's malloc, the passes and the ops."""
    from benchmarks import bench_vs_textbook
    from benchmarks.breakdown import DEPTHWISE_CASES

    out = tmp_path / "vs.json"
    assert bench_vs_textbook.main(["--quick", "--batch-sizes", "2", "--repeats", "1", "--threads", "1",
                                   "--algorithms", "fairdarts_1st", "--images", "16", "--passes", "--ops",
                                   "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert max(result["equality_rel_err"]["fairdarts_1st"].values()) < 1e-10
    rows = {r["impl"]: r for r in result["rows"]}
    assert list(rows) == list(bench_vs_textbook.IMPLEMENTATIONS)
    for impl in ("ours", "pytorch_kernels"):
        for key in ("speedup", "speedup_cpu", "weight_speedup", "weight_speedup_cpu", "mem_ratio"):
            assert rows[impl][key] > 0
        assert rows[impl]["speedup"] == rows["textbook"]["median_s"] / rows[impl]["median_s"]
    assert "speedup" not in rows["textbook"]
    memory = {r["impl"]: r for r in result["memory"]}
    assert list(memory) == list(bench_vs_textbook.MEMORY_VARIANTS)
    assert all(r["peak_mib"] > 0 and r["minor_faults_per_step"] >= 0 and r["step_cpu_s"] > 0 for r in memory.values())
    (passes,) = result["passes"]
    assert passes["predicted_ratio"] == ((2 * passes["W_s"] + passes["V_s"] + 2 * passes["A_s"])
                                         / (passes["A_s"] + passes["W_s"]))
    assert len(result["ops"]) == len(DEPTHWISE_CASES)
    assert max(r["max_rel_diff"] for r in result["ops"]) < 1e-4  # float32, sums regrouped
    printed = capsys.readouterr().out
    assert "ours_glibc_malloc" in printed and "floor of any exact implementation" in printed and "nn.Conv2d" in printed


def test_vs_textbook_pytorch_kernels_switch_the_library_off_for_the_call_only() -> None:
    from benchmarks.bench_vs_textbook import kernels_of
    from fairdarts.search_space import native

    before = native.library()
    with kernels_of("pytorch_kernels"):
        assert native.library() is None
    assert native.library() is before
    with kernels_of("ours"):
        assert native.library() is before


def test_memory_quick_reports_slope_and_estimate(tmp_path: Path, capsys) -> None:
    from benchmarks import bench_memory

    out = tmp_path / "memory.json"
    assert bench_memory.main(["--quick", "--models", "cell_supernet", "--batches", "2", "4", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["model"] == "cell_supernet" and row["batches"] == [2, 4] and row["image_size"] == 16
    assert row["mib_per_image"] == (row["peak_mib"][1] - row["peak_mib"][0]) / 2
    assert row["estimate_mib_per_image"] > 0 and row["estimate_weights_mib"] > 0
    assert row["measured_over_estimate"] == row["mib_per_image"] / row["estimate_mib_per_image"]
    assert "measured/est." in capsys.readouterr().out


def test_memory_needs_two_batch_sizes(capsys) -> None:
    from benchmarks import bench_memory

    with pytest.raises(SystemExit):
        bench_memory.main(["--quick", "--batches", "4"])
    assert "at least two different sizes" in capsys.readouterr().err


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
        assert r["eager_peak_mib"] is None and r["graphed_peak_mib"] is None  # CUDA's allocator only
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
