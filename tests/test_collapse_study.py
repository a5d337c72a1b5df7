"""The collapse study's summary.json against an independent recomputation from each run's
alpha_history.npz, on fabricated run folders (fast) and on three tiny real searches plus their
retraining (slow)."""
from __future__ import annotations

import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest
import yaml

from fairdarts.errors import UserError
from fairdarts.search_space import resolve_primitives

REPO = Path(__file__).resolve().parents[1]
study = runpy.run_path(str(REPO / "scripts" / "collapse_study.py"))


# ----- independent recomputation (numpy only, not the script's code) --------------------------
def darts_rule_skips(w: np.ndarray, primitives: tuple[str, ...]) -> int:
    """Skips of a normal cell by the DARTS rule: per node the 2 inputs whose strongest non-none op
    is largest, strongest non-none op on each."""
    ops = [k for k, p in enumerate(primitives) if p != "none"]
    skips, start = 0, 0
    for node in range(4):
        rows = w[start:start + node + 2][:, ops]
        for r in np.argsort(-rows.max(axis=1))[:2]:
            skips += primitives[ops[int(np.argmax(rows[r]))]] == "skip_connect"
        start += node + 2
    return skips


def recompute(run: Path, summary: dict) -> None:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    primitives = resolve_primitives(cfg["primitives"])
    h = np.load(run / "alpha_history.npz")
    normal, reduce = h["gated_normal"], h["gated_reduce"]
    assert summary["epochs"] == len(h["epochs"])
    assert summary["skips_per_epoch"] == [darts_rule_skips(w, primitives) for w in normal]
    if cfg["gate"] == "sigmoid":
        gates = np.concatenate([normal.reshape(len(normal), -1), reduce.reshape(len(reduce), -1)], axis=1)
        share = ((gates < 0.1) | (gates > 0.9)).mean(axis=1)
        assert summary["polarised_share_per_epoch"] == pytest.approx(list(share))
        assert summary["polarised_share"] == pytest.approx(share[-1])
        above = np.flatnonzero(gates.max(axis=1) > 0.85)
        assert summary["first_epoch_gate_above_0_85"] == (int(h["epochs"][above[0]]) + 1 if len(above) else None)
    else:
        assert "polarised_share" not in summary
    if "final_gate_range" in summary:  # summaries written since 2026-12-07
        last = np.concatenate([normal[-1].ravel(), reduce[-1].ravel()])
        assert summary["final_gate_range"] == pytest.approx([last.min(), last.max()])
    eigen = run / "hessian_eigen.json"
    if eigen.is_file():
        records = json.loads(eigen.read_text())["records"]
        assert summary["hessian_eigen"]["epochs"] == [r["epoch"] + 1 for r in records]
        assert summary["hessian_eigen"]["largest"] == [r["largest"] for r in records]
        if "darts_es_replay" in summary["hessian_eigen"]:  # summaries written since 2026-12-07
            assert summary["hessian_eigen"]["darts_es_replay"] == study["darts_es_replay"](records)
    else:
        assert "hessian_eigen" not in summary


# ----- fabricated run folders -------------------------------------------------------------------
def fake_run(folder: Path, gate: str, epochs: int, seed: int, log: bool = True, eigen_every: int = 0) -> Path:
    """A run folder with gates drifting to 0/1 (sigmoid) or random softmax rows, as a search writes it."""
    rng = np.random.default_rng(seed)
    n_ops = 7 if gate == "sigmoid" else 8
    raw = rng.normal(size=(epochs, 2, 14, n_ops)) * np.linspace(0.1, 6, epochs)[:, None, None, None]
    gated = 1 / (1 + np.exp(-raw)) if gate == "sigmoid" else np.exp(raw) / np.exp(raw).sum(-1, keepdims=True)
    folder.mkdir(parents=True)
    np.savez(folder / "alpha_history.npz", epochs=np.arange(epochs), raw_normal=raw[:, 0], raw_reduce=raw[:, 1],
             gated_normal=gated[:, 0], gated_reduce=gated[:, 1])
    cfg = {"dataset": "synthetic", "data": "data", "subset": 100, "train_portion": 0.5, "image_size": 8,
           "init_channels": 4, "layers": 3, "batch_size": 8, "epochs": epochs, "seed": 2, "device": "cpu",
           "threads": 1, "max_steps_per_epoch": None, "search_space": "cell", "op_threshold": 0.85,
           "primitives": "fairdarts" if gate == "sigmoid" else "darts", "gate": gate}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    if log:
        (folder / "log.txt").write_text("".join(
            f"2026-12-02 06:{e:02d}:00 epoch {e} train_acc 10.00 train_loss 2.3 valid_acc 10.00 valid_loss 2.3 "
            f"arch_loss 2.3 zero_one 1.0e-03 ({5 + e} steps, 1.0 s)\n" for e in range(epochs)))
    if eigen_every:
        records = [{"epoch": e, "largest": 0.1 * (1 + e) ** 1.5, "smallest": -0.01 * e, "iterations": 9,
                    "converged": True, "batches": 1} for e in range(0, epochs, eigen_every)]
        (folder / "hessian_eigen.json").write_text(json.dumps(
            {"records": records, "early_stop": {"stopped_after": 4, "genotype_epoch": 0, "ratio": 1.5}}))
    return folder


@pytest.fixture
def fake_study(tmp_path):
    runs = {"DARTS": fake_run(tmp_path / "a", "softmax", 6, 0, eigen_every=2),
            "FairDARTS": fake_run(tmp_path / "b", "sigmoid", 6, 1, log=False)}
    out = tmp_path / "study"
    assert study["main"](["report", "--runs", *(f"{k}={v}" for k, v in runs.items()), "--out", str(out)]) == 0
    return runs, out


def test_summary_recomputes_from_the_npz(fake_study):
    runs, out = fake_study
    summary = json.loads((out / "summary.json").read_text())["runs"]
    for label, folder in runs.items():
        recompute(folder, summary[label])
    # The gates grow to +-6 logits: polarisation and a gate past 0.85 do happen here.
    assert summary["FairDARTS"]["polarised_share"] > 0.5
    assert summary["FairDARTS"]["first_epoch_gate_above_0_85"] is not None


def test_arch_steps_from_the_log_or_from_the_config(fake_study):
    runs, out = fake_study
    summary = json.loads((out / "summary.json").read_text())["runs"]
    assert summary["DARTS"]["arch_steps_per_epoch"] == [5, 6, 7, 8, 9, 10]
    assert summary["DARTS"]["arch_steps_source"] == "log.txt"
    assert summary["DARTS"]["wall_seconds"] == 5 * 60
    assert summary["DARTS"]["segments"] == 1
    # No log: the weight half of --subset 100 is 50 images, ceil(50 / 8) = 7 steps per epoch.
    assert summary["FairDARTS"]["arch_steps"] == 6 * 7
    assert summary["FairDARTS"]["arch_steps_source"].startswith("config.yaml")
    assert summary["FairDARTS"]["wall_seconds"] is None


def test_wall_time_sums_the_segments_of_a_resumed_run():
    """A study resumed in a later session: the pause between the segments is not search time."""
    lines = ["2026-12-07 18:00:00 search config: {}", "2026-12-07 18:10:00 epoch 0 train_acc ...",
             "2026-12-07 20:10:00 epoch 1 train_acc ...", "no timestamp",
             "2026-12-08 09:00:00 resumed from /r/checkpoint.pt after epoch 2 of 4",
             "2026-12-08 09:30:00 epoch 3 train_acc ..."]
    assert study["log_segments"](lines) == [130 * 60, 30 * 60]
    assert study["log_span"](lines) == 160 * 60
    assert study["log_span"](["no timestamp"]) is None
    # A resumed process writes its lock note, config and kernel lines before `resumed from`:
    # they open the new segment (the pause went into the first one before).
    resumed = ["2026-12-07 18:00:00 search config: {}", "2026-12-07 20:10:00 epoch 1 train_acc ...",
               "2026-12-08 09:00:00 note: the lock of PID 7, which no longer runs, was taken over",
               "2026-12-08 09:00:00 search config: {}", "2026-12-08 09:00:05 native CPU kernels: on",
               "2026-12-08 09:00:06 resumed from /r/checkpoint.pt after epoch 2 of 4",
               "2026-12-08 09:30:00 epoch 3 train_acc ...",
               "2026-12-08 10:00:00 search config: {}", "2026-12-08 10:00:01 resumed from /r/checkpoint.pt",
               "2026-12-08 10:10:00 epoch 3 train_acc ..."]
    assert study["log_segments"](resumed) == [130 * 60, 30 * 60, 10 * 60]


def test_report_is_made_from_the_data(fake_study):
    runs, out = fake_study
    text = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())["runs"]
    for name in ("skip_connections.png", "gate_heatmap.png", "gate_histograms_FairDARTS.png"):
        assert (out / name).stat().st_size > 0 and f"({name})" in text
    assert f"{summary['FairDARTS']['polarised_share']:.1%}" in text
    for rule in ("threshold_sparse", "darts"):
        assert f"* {rule}: `Genotype(" in text
    assert "Hardware: not recorded" in text and "not retrained" in text
    # The collapse instrument's records (DARTS only): a curve, a column and the early stop.
    assert (out / "hessian_eigen.png").stat().st_size > 0 and "(hessian_eigen.png)" in text
    assert "| DARTS skips | DARTS eigenvalue | FairDARTS skips |" in text
    assert f"| 3 | {summary['DARTS']['skips_per_epoch'][2]} | {0.1 * 3 ** 1.5:.4g} |" in text
    assert "DARTS-ES stopped the search after epoch 5 (local average x1.50); genotype of epoch 1" in text


def test_run_passes_hessian_every_to_new_and_resumed_searches(tmp_path):
    args = study["build_parser"]().parse_args(["run", "--hessian_every", "2", "--out", str(tmp_path)])
    fresh = study["search_command"]("DARTS", args, tmp_path / "new")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "checkpoint.pt").write_bytes(b"")
    resumed = study["search_command"]("FairDARTS", args, tmp_path / "old")
    for cmd in (fresh, resumed):
        assert cmd[cmd.index("--hessian_every") + 1] == "2"
    assert "--resume" in resumed and "--save" in fresh
    plain = study["build_parser"]().parse_args(["run", "--out", str(tmp_path)])
    assert "--hessian_every" not in study["search_command"]("DARTS", plain, tmp_path / "new")


def test_segment_boundary_shows_a_jump_in_the_gates(tmp_path):
    """A resumed run's boundary is found from its log; a gate jump there stands out against the
    epochs around it, a smooth history does not."""
    folder = fake_run(tmp_path / "a", "sigmoid", 8, 0)
    with (folder / "log.txt").open("a") as f:
        f.write(f"2026-12-03 06:00:00 resumed from {folder}/checkpoint.pt after epoch 4 of 8\n")
    with np.load(folder / "alpha_history.npz") as h:
        data = dict(h)
    drift = 0.01 * np.arange(8)[:, None, None]  # every gate moves by 0.01 an epoch
    data["gated_normal"] = np.broadcast_to(0.3 + drift, data["gated_normal"].shape).copy()
    data["gated_reduce"] = np.broadcast_to(0.6 - drift, data["gated_reduce"].shape).copy()
    np.savez(folder / "alpha_history.npz", **data)
    (smooth,) = study["segment_boundaries"](study["load_run"]("A", folder))
    data["gated_normal"][4:] += 0.5  # a jump into epoch index 4
    np.savez(folder / "alpha_history.npz", **data)
    (jump,) = study["segment_boundaries"](study["load_run"]("A", folder))
    assert smooth["after_epoch"] == jump["after_epoch"] == 4
    assert smooth["gate_change"] == pytest.approx(smooth["median_change_nearby"]) == pytest.approx(0.01)
    assert jump["gate_change"] == pytest.approx(0.51) and jump["median_change_nearby"] == pytest.approx(0.01)


def test_report_compares_with_another_study(fake_study, tmp_path):
    """--compare puts both studies' figures side by side (other -> this); it is kept in
    summary.json, so a later report (e.g. after retrain) keeps the table."""
    runs, other = fake_study
    longer = {"DARTS": fake_run(tmp_path / "c", "softmax", 9, 3),
              "FairDARTS": fake_run(tmp_path / "d", "sigmoid", 9, 4)}
    out = tmp_path / "longer"
    specs = [f"{k}={v}" for k, v in longer.items()]
    assert study["main"](["report", "--runs", *specs, "--out", str(out), "--compare", str(other)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compared_with"] == "../study"
    text = (out / "report.md").read_text()
    assert "## Against `../study`" in text
    section = text.split("## Against")[1].split("## Budget")[0]
    row = next(line for line in section.splitlines() if line.startswith("| FairDARTS |"))
    assert "| 42 -> 81 |" in row  # the other study's FairDARTS has no log: 6 epochs x 7 steps from its config
    assert study["main"](["report", "--runs", *specs, "--out", str(out)]) == 0
    assert "## Against `../study`" in (out / "report.md").read_text()


def test_darts_es_replay_says_where_the_rule_would_have_stopped():
    """Replayed record by record with RobustDARTS' defaults: a flat curve never fires; one that
    rises by more than 1.3x over 4 records fires at the first record that shows it, designating
    the genotype window // 2 + delta records earlier (epochs from 1 in the summary)."""
    flat = [{"epoch": e, "largest": 0.1} for e in range(0, 50, 2)]
    assert study["darts_es_replay"](flat) is None
    rising = [{"epoch": e, "largest": 0.1 if e < 30 else 0.5} for e in range(0, 50, 2)]
    replay = study["darts_es_replay"](rising)
    from fairdarts.search.collapse import DartsES

    epochs, values = [r["epoch"] for r in rising], [r["largest"] for r in rising]
    first = next(k for k in range(1, len(rising) + 1) if DartsES().check(epochs[:k], values[:k]))
    assert replay["stopped_after"] == epochs[first - 1] + 1 == 31  # the first record at 0.5: epoch index 30
    assert replay["genotype_epoch"] == epochs[first - 1 - 2 - 4] + 1 and replay["ratio"] > 1.3


def test_report_rejects_what_is_not_a_run_folder(tmp_path):
    with pytest.raises(UserError, match="not a finished search run folder"):
        study["main"](["report", "--runs", f"X={tmp_path}", "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="LABEL=RUN_DIR"):
        study["main"](["report", "--runs", str(tmp_path), "--out", str(tmp_path / "o")])


def test_snapshot_epochs_span_first_to_last():
    assert study["snapshot_epochs"](50) == [0, 9, 24, 49]  # epochs 1, 10, 25, 50: the paper's Figure 1
    assert study["snapshot_epochs"](2) == [0, 1]
    assert study["snapshot_epochs"](1) == [0]


# ----- three tiny real searches and their retraining -------------------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_run_searches_reports_and_retrains(tmp_path):
    out = tmp_path / "study"
    argv = ["run", "--dataset", "synthetic", "--subset", "32", "--image_size", "8", "--init_channels", "4",
            "--layers", "3", "--batch_size", "8", "--epochs", "2", "--max_steps_per_epoch", "2", "--device", "cpu",
            "--retrain", "--out", str(out)]
    assert study["main"](argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"DARTS", "DARTS_noise", "FairDARTS"}
    for label, s in summary["runs"].items():
        small = out / label
        assert sorted(p.name for p in small.iterdir()) == ["alpha_history.npz", "config.yaml", "genotype.json",
                                                           "log.txt"]
        recompute(small, s)
        cfg = yaml.safe_load((small / "config.yaml").read_text())
        assert s["arch_steps"] == 2 * min(math.ceil(16 / 8), 2) and s["arch_steps_source"] == "log.txt"
        assert (cfg["epochs"], cfg["subset"], cfg["seed"], cfg["image_size"]) == (2, 32, 2, 8)
        assert cfg["gate"] == ("sigmoid" if label == "FairDARTS" else "softmax")
        assert 0.0 <= s["retrain"]["test_top1"] <= 100.0 and s["retrain"]["epochs"] == 2
        assert f"test_top1 {s['retrain']['test_top1']:.2f}" in (out / s["retrain"]["log"]).read_text()
        assert s["retrain"]["log"] == f"retrain/{label}_log.txt"
    assert yaml.safe_load((out / "DARTS_noise" / "config.yaml").read_text())["noise_darts"] is True
    assert yaml.safe_load((out / "FairDARTS" / "config.yaml").read_text())["aux_loss_weight"] == 10
    assert "CPU cores" in summary["study"]["hardware"] and "--epochs 2" in summary["study"]["command"]
    assert "retrained test top-1" in (out / "report.md").read_text()

    # A search killed after its last checkpoint resumes with the same command; the others are
    # kept, and so is the retraining of the unchanged study.
    (out / "runs" / "DARTS" / "genotype.json").unlink()
    assert study["main"]([a for a in argv if a != "--retrain"]) == 0
    assert (out / "runs" / "DARTS" / "genotype.json").is_file()
    again = json.loads((out / "summary.json").read_text())
    assert again["runs"]["DARTS"]["retrain"] == summary["runs"]["DARTS"]["retrain"]
    assert "resumed from" in (out / "DARTS" / "log.txt").read_text()


# ----- the committed study ------------------------------------------------------------------------
LONG = REPO / "reports" / "collapse_long"


PAPER = REPO / "reports" / "collapse_paper"


def test_committed_paper_length_study_recomputes_from_its_npz():
    """reports/collapse_paper (issue 23): 50 epochs of 196 architecture steps = 9,800 per search,
    run in segments; every number recomputed from the committed files, no gate jump where a
    segment resumed, and the table against collapse_long."""
    summary = json.loads((PAPER / "summary.json").read_text())
    assert set(summary["runs"]) == {"DARTS", "DARTS_noise", "FairDARTS"}
    for label, run in summary["runs"].items():
        assert run["epochs"] == 50 and run["arch_steps"] == 9800 and run["arch_steps_source"] == "log.txt", label
        assert run["arch_steps_per_epoch"] == [196] * 50, label
        assert run["segments"] >= 2 and len(run["segment_boundaries"]) == run["segments"] - 1, label
        for b in run["segment_boundaries"]:
            assert b["gate_change"] <= 3 * b["median_change_nearby"], (label, b)
        recompute(PAPER / label, run)
        assert "retrain" in run and run["retrain"]["epochs"] == 50, label
    assert summary["compared_with"] == "../collapse_long"
    assert "## Against `../collapse_long`" in (PAPER / "report.md").read_text()


def test_committed_long_study_recomputes_from_its_npz():
    """reports/collapse_long/summary.json: every run 50 epochs, each number recomputed from the
    committed alpha_history.npz and config.yaml of its <LABEL>/ folder."""
    summary = json.loads((LONG / "summary.json").read_text())
    assert set(summary["runs"]) == {"DARTS", "DARTS_noise", "FairDARTS"}
    for label, run in summary["runs"].items():
        assert run["epochs"] == 50, label
        recompute(LONG / label, run)
