"""The collapse study: DARTS, DARTS with noisy skips and Fair DARTS under one budget.

DARTS' softmax makes the ops of an edge compete; skip connections win that competition
unfairly and pile up in the derived normal cell (the collapse). Fair DARTS gates each op with
its own sigmoid and pushes the gates to 0 or 1 with the zero-one loss. This script shows it:

* ``run``: the three searches side by side (one process and one thread each) with identical
  data, sizes and seed, then ``report`` (and ``retrain`` with ``--retrain``);
* ``report``: from finished run folders, ``summary.json`` and ``report.md`` with its plots;
* ``retrain``: each run's derived genotype trained by ``train.py`` on the search's data, sizes,
  seed and epochs; its test accuracy goes into ``summary.json`` and ``report.md``.

In ``--out``: ``summary.json``, ``report.md`` and its pictures; ``<LABEL>/`` the small files of
each search (the ones read here), ``runs/<LABEL>/`` the full search folders (git-ignored),
``retrain/`` the retrained genotypes and their logs (the run folders under it git-ignored).

Everything is computed from each run folder's ``alpha_history.npz`` (gate values per epoch),
``config.yaml``, ``log.txt`` and, for searches run with ``--hessian_every`` (the collapse
instrument, ``docs/collapse_instrument.md``), ``hessian_eigen.json``. Epochs are numbered from 1
(the npz ``epochs`` + 1). Per epoch, the normal cell is derived with the DARTS rule (2 strongest
inputs per node, strongest op, ``none`` never chosen) for all three runs, so that skips are
counted the same way.

    python scripts/collapse_study.py run --dataset fashion_mnist --data /usr/share/datasets/fashion-mnist \\
        --subset 4096 --image_size 16 --init_channels 8 --layers 5 --batch_size 32 --epochs 50 \\
        --device cpu --retrain --out reports/collapse_long
    python scripts/collapse_study.py report --runs DARTS=runs/a DARTS_noise=runs/b FairDARTS=runs/c \\
        --out reports/collapse_long
    python scripts/collapse_study.py retrain --out reports/collapse_long
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fairdarts.errors import CLIParser, UserError, run_cli  # noqa: E402
from fairdarts.search.collapse import EIGEN_FILE, DartsES  # noqa: E402
from fairdarts.search.spaces import CellSpace  # noqa: E402
from fairdarts.search_space import Genotype, derive, resolve_primitives  # noqa: E402
from fairdarts.visualize import render_genotype  # noqa: E402

POLAR_LOW, POLAR_HIGH = 0.1, 0.9     # a gate below / above these counts as polarised (0 or 1)
GATE_PASSED = 0.85                   # Fair DARTS' default --op_threshold
RULES = ("threshold_sparse", "darts")
STUDY = "study.json"                 # what `run` knows and a run folder does not: hardware, command
SEARCH_EPOCH = re.compile(r"^(\S+ \S+) epoch (\d+) train_acc .* \((\d+) steps, [0-9.]+ s\)$")
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")
TEST_TOP1 = re.compile(r"epoch (\d+) train_loss .* test_top1 ([0-9.]+) ")


# ----- one finished search ----------------------------------------------------------------
@dataclass
class Run:
    """One finished search as the report sees it."""

    label: str
    folder: Path
    config: dict
    primitives: tuple[str, ...]
    epochs: np.ndarray          # [E], 0-based as in the npz
    gated_normal: np.ndarray    # [E, 14, n_ops]
    gated_reduce: np.ndarray    # [E, 14, n_ops]
    log: list[str]
    eigen: dict | None = None   # hessian_eigen.json, when the search ran the collapse instrument

    @property
    def gate(self) -> str:
        return self.config.get("gate", "sigmoid")

    def skips_per_epoch(self) -> list[int]:
        return [sum(op == "skip_connect" for op, _ in derive(w, self.primitives, "darts")) for w in self.gated_normal]

    def all_gates(self, e: int) -> np.ndarray:
        """Every gate value of epoch index ``e``, both cells."""
        return np.concatenate([self.gated_normal[e].ravel(), self.gated_reduce[e].ravel()])

    def polarised_share_per_epoch(self) -> list[float]:
        return [float(np.mean((g < POLAR_LOW) | (g > POLAR_HIGH)))
                for g in (self.all_gates(e) for e in range(len(self.epochs)))]

    def gate_change_per_epoch(self) -> list[float]:
        """Largest change of any gate from the epoch before, for every epoch but the first."""
        return [float(np.abs(self.all_gates(e) - self.all_gates(e - 1)).max()) for e in range(1, len(self.epochs))]

    def final_gate_range(self) -> tuple[float, float]:
        """Smallest and largest gate of the last epoch, both cells."""
        gates = self.all_gates(len(self.epochs) - 1)
        return float(gates.min()), float(gates.max())

    def first_epoch_gate_above(self, threshold: float) -> int | None:
        for e, number in enumerate(self.epochs):
            if self.all_gates(e).max() > threshold:
                return int(number) + 1
        return None

    def genotype(self, rule: str) -> Genotype:
        """The final genotype under ``rule`` (threshold rules at the run's --op_threshold)."""
        space = CellSpace(self.primitives)
        return space.derive((self.gated_normal[-1], self.gated_reduce[-1]), rule,
                            float(self.config.get("op_threshold", GATE_PASSED)))

    def eigen_summary(self) -> dict | None:
        """The Hessian eigenvalue records (epochs from 1) and the early stop, if the run has them."""
        if not self.eigen or not self.eigen["records"]:
            return None
        records = self.eigen["records"]
        return {"epochs": [r["epoch"] + 1 for r in records], "largest": [r["largest"] for r in records],
                "smallest": [r["smallest"] for r in records], "iterations": [r["iterations"] for r in records],
                "converged": [r["converged"] for r in records], "batches": [r["batches"] for r in records],
                "early_stop": self.eigen.get("early_stop"), "darts_es_replay": darts_es_replay(records)}

    def steps_per_epoch(self) -> tuple[list[int] | None, str]:
        """Search steps (one architecture step each) of every epoch, and where they come from.

        The search log states them (``(N steps, ...)``); for older logs they are computed from the
        config as the search counts them: ``min(ceil(floor(train_portion * subset) / batch_size),
        max_steps_per_epoch)`` (the weight half, last batch kept), possible only with ``--subset``."""
        logged: dict[int, int] = {}
        for line in self.log:
            m = SEARCH_EPOCH.match(line)
            if m:
                logged[int(m.group(2))] = int(m.group(3))  # a resumed epoch: its last record counts
        if all(int(e) in logged for e in self.epochs):
            return [logged[int(e)] for e in self.epochs], "log.txt"
        cfg = self.config
        if cfg.get("subset") is None:
            return None, "unknown: the log does not state the steps and the config has no --subset"
        n = math.ceil(math.floor(cfg["train_portion"] * cfg["subset"]) / cfg["batch_size"])
        if cfg.get("max_steps_per_epoch") is not None:
            n = min(n, cfg["max_steps_per_epoch"])
        return [n] * len(self.epochs), "config.yaml (ceil(floor(train_portion * subset) / batch_size))"



def darts_es_replay(records: list[dict]) -> dict | None:
    """What RobustDARTS' DARTS-ES rule (their defaults) decides on these records, replayed record by
    record as the search would have with ``--early_stop_eigen``: the first firing (epochs from 1),
    or None. Shown for every run, so a search run without the rule still says where it would
    have stopped."""
    epochs, values = [r["epoch"] for r in records], [r["largest"] for r in records]
    for k in range(1, len(records) + 1):
        stop = DartsES().check(epochs[:k], values[:k])
        if stop is not None:
            return {"stopped_after": stop.stopped_after + 1, "genotype_epoch": stop.genotype_epoch + 1,
                    "ratio": stop.ratio}
    return None


RESUMED = re.compile(r"^\S+ \S+ resumed from ")
#: The first lines a search or retraining process writes (before its ``resumed from`` line).
PROCESS_START = re.compile(r"^\S+ \S+ (note: the lock of PID \d+, which no longer runs, was taken over|\w+ config: )")


def log_segments(lines: list[str]) -> list[float]:
    """Seconds of each segment of a log, first to last timestamp, so that a pause between two
    sessions is not counted. A later segment starts at the first line its process wrote (the
    lock note or the config line), or, in a log without them, at its ``resumed from`` line."""
    spans: list[list[datetime]] = []
    prev_start, may_resume = False, False  # may_resume: a later segment whose resume line is still to come
    for line in lines:
        m = TIMESTAMP.match(line)
        if not m:
            continue
        start, resumed = bool(PROCESS_START.match(line)), bool(RESUMED.match(line))
        if not spans or (start and not prev_start):
            may_resume = bool(spans)
            spans.append([])
        elif resumed and may_resume:
            may_resume = False
        elif resumed:
            spans.append([])
        prev_start = start
        spans[-1].append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
    return [(s[-1] - s[0]).total_seconds() for s in spans if s]


RESUMED_AFTER = re.compile(r" resumed from .* after epoch (\d+) of ")


def segment_boundaries(run: Run, around: int = 3) -> list[dict]:
    """Where a resumed run continued, and whether its gates jump there: the largest gate change
    into the first epoch of each later segment, against the median change of the ``around``
    epochs before and after (an exact resume shows no jump)."""
    changes = run.gate_change_per_epoch()   # changes[e - 1]: into epoch index e
    found = []
    for line in run.log:
        m = RESUMED_AFTER.search(line)
        if not m or not 1 <= int(m.group(1)) < len(run.epochs):
            continue
        k = int(m.group(1))                 # epochs done before the segment; epoch index k is its first
        nearby = changes[max(0, k - 1 - around):k - 1] + changes[k:k + around]
        found.append({"after_epoch": k, "gate_change": changes[k - 1],
                      "median_change_nearby": float(np.median(nearby)) if nearby else None})
    return found


def log_span(lines: list[str]) -> float | None:
    """Seconds the run ran, summed over its segments (None for a log without timestamps)."""
    segments = log_segments(lines)
    return sum(segments) if segments else None


def load_run(label: str, folder: Path) -> Run:
    history, config = folder / "alpha_history.npz", folder / "config.yaml"
    if not history.is_file() or not config.is_file():
        raise UserError(f"{folder} is not a finished search run folder (needs alpha_history.npz and config.yaml)")
    cfg = yaml.safe_load(config.read_text())
    if cfg.get("search_space", "cell") != "cell":
        raise UserError(f"{folder} searched the {cfg['search_space']} space; the collapse study needs cell searches")
    with np.load(history) as data:
        epochs, normal, reduce = data["epochs"], data["gated_normal"], data["gated_reduce"]
    log = folder / "log.txt"
    lines = log.read_text().splitlines() if log.is_file() else []
    primitives = resolve_primitives(cfg.get("primitives", "fairdarts"))
    eigen = json.loads((folder / EIGEN_FILE).read_text()) if (folder / EIGEN_FILE).is_file() else None
    return Run(label, folder, cfg, primitives, epochs, normal, reduce, lines, eigen)


def parse_run_specs(specs: list[str]) -> list[Run]:
    runs = []
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label:
            raise UserError(f"--runs takes LABEL=RUN_DIR entries, got {spec!r}")
        runs.append(load_run(label, Path(path)))
    return runs


# ----- summary.json -------------------------------------------------------------------------
def run_summary(run: Run, out: Path) -> dict:
    steps, source = run.steps_per_epoch()
    s = {
        "folder": os.path.relpath(run.folder, out),
        "gate": run.gate,
        "epochs": len(run.epochs),
        "arch_steps": sum(steps) if steps is not None else None,
        "arch_steps_per_epoch": steps,
        "arch_steps_source": source,
        "skips_per_epoch": run.skips_per_epoch(),
        "genotypes": {rule: run.genotype(rule).to_dict() for rule in RULES},
        "wall_seconds": log_span(run.log),
        "segments": len(log_segments(run.log)),
        "segment_boundaries": segment_boundaries(run),
        "final_gate_range": list(run.final_gate_range()),
    }
    eigen = run.eigen_summary()
    if eigen is not None:
        s["hessian_eigen"] = eigen
    if run.gate == "sigmoid":
        per_epoch = run.polarised_share_per_epoch()
        s |= {"polarised_share": per_epoch[-1], "polarised_share_per_epoch": per_epoch,
              "first_epoch_gate_above_0_85": run.first_epoch_gate_above(GATE_PASSED)}
    return s


def write_summary(runs: list[Run], out: Path, compare: Path | None = None) -> dict:
    """``summary.json``; a retraining recorded by an earlier ``retrain`` is kept, and so is the
    study compared with (``compared_with``, relative to ``out``) when ``compare`` is not given."""
    path = out / "summary.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    summary = {
        "epoch_numbering": "from 1 (alpha_history.npz 'epochs' + 1)",
        "polarised": f"gate < {POLAR_LOW} or > {POLAR_HIGH}, all gates of both cells",
        "runs": {r.label: run_summary(r, out) for r in runs},
    }
    compared = os.path.relpath(compare, out) if compare is not None else old.get("compared_with")
    if compared is not None:
        summary["compared_with"] = compared
    for label, s in summary["runs"].items():
        kept = old.get("runs", {}).get(label, {}).get("retrain")
        if kept and kept.get("search_folder") == s["folder"]:
            s["retrain"] = kept
    if (out / STUDY).is_file():
        summary["study"] = json.loads((out / STUDY).read_text())
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# ----- plots --------------------------------------------------------------------------------
def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path.write_bytes(buf.getvalue())
    return path


def plot_skips(runs: list[Run], out: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.4), dpi=100)
    ax = fig.subplots()
    for r in runs:
        ax.plot(r.epochs + 1, r.skips_per_epoch(), marker="o", markersize=3, label=r.label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("skip connections (DARTS rule)")
    ax.set_ylim(-0.2, 8.2)
    ax.legend()
    ax.set_title("Skip connections in the derived normal cell")
    fig.tight_layout()
    return _save(fig, out / "skip_connections.png")


def plot_gate_heatmaps(runs: list[Run], out: Path, bins: int = 20) -> Path:
    """Epochs x gate-value bins, share of all gates (both cells) per bin: the paper's Figure 1
    as one picture per run."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(runs), 3.6), dpi=100)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, r in zip(axes, runs):
        share = np.stack([np.histogram(r.all_gates(e), bins=edges)[0] / r.all_gates(e).size
                          for e in range(len(r.epochs))])
        im = ax.imshow(share.T, origin="lower", aspect="auto", cmap="viridis", vmin=0,
                       extent=(r.epochs[0] + 0.5, r.epochs[-1] + 1.5, 0, 1))
        ax.set_title(f"{r.label} ({r.gate})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("gate value")
        fig.colorbar(im, ax=ax, label="share of gates")
    fig.tight_layout()
    return _save(fig, out / "gate_heatmap.png")


def plot_eigenvalues(runs: list[Run], out: Path) -> Path | None:
    """The largest Hessian eigenvalue per epoch of every run that recorded it (RobustDARTS' curve)."""
    from matplotlib.figure import Figure

    recorded = [(r, r.eigen_summary()) for r in runs if r.eigen_summary() is not None]
    if not recorded:
        return None
    fig = Figure(figsize=(5.5, 3.4), dpi=100)
    ax = fig.subplots()
    for r, e in recorded:
        ax.plot(e["epochs"], e["largest"], marker="o", markersize=3, label=r.label)
        if e["early_stop"]:
            ax.axvline(e["early_stop"]["stopped_after"] + 1, linestyle=":", color=ax.lines[-1].get_color())
    ax.set_xlabel("epoch")
    ax.set_ylabel("largest eigenvalue")
    ax.legend()
    ax.set_title("Architecture Hessian of the validation loss")
    fig.tight_layout()
    return _save(fig, out / "hessian_eigen.png")


#: Where the histograms look, as shares of the search: the paper's Figure 1 shows epochs 1, 10,
#: 25 and 50 of 50.
SNAPSHOTS = (0.0, 0.2, 0.5, 1.0)


def snapshot_epochs(n: int) -> list[int]:
    """Epoch indices of the histograms: the first epoch, then 20%, 50% and 100% of ``n``."""
    return sorted({max(round(share * n) - 1, 0) for share in SNAPSHOTS})


def plot_gate_histograms(run: Run, out: Path) -> Path:
    """Histograms of one run's gate values at a few epochs (the paper's Figure 1)."""
    from matplotlib.figure import Figure

    picks = snapshot_epochs(len(run.epochs))
    fig = Figure(figsize=(2.6 * len(picks), 2.6), dpi=100)
    axes = fig.subplots(1, len(picks), squeeze=False, sharey=True)[0]
    for ax, e in zip(axes, picks):
        ax.hist(run.all_gates(e), bins=20, range=(0, 1), color="tab:blue")
        ax.set_title(f"epoch {int(run.epochs[e]) + 1}", fontsize=9)
        ax.set_xlabel("gate value")
    axes[0].set_ylabel("gates (both cells)")
    fig.suptitle(f"{run.label}: {run.gate} gate values", fontsize=10)
    fig.tight_layout()
    return _save(fig, out / f"gate_histograms_{run.label}.png")


# ----- report.md ----------------------------------------------------------------------------
def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "no timestamps in log.txt"
    return f"{seconds / 60:.1f} min"


def budget_lines(runs: list[Run], summary: dict) -> list[str]:
    keys = ("dataset", "subset", "train_portion", "image_size", "init_channels", "layers", "batch_size", "epochs",
            "seed", "device", "threads", "max_steps_per_epoch")
    lines = ["| run | " + " | ".join(keys) + " | arch steps | search wall time | segments |",
             "| --- " * (len(keys) + 4) + "|"]
    for r in runs:
        s = summary["runs"][r.label]
        lines.append(f"| {r.label} | " + " | ".join(str(r.config.get(k)) for k in keys)
                     + f" | {s['arch_steps']} ({s['arch_steps_source']}) | {_duration(s['wall_seconds'])} "
                     + f"| {s.get('segments', 1)} |")
    study = summary.get("study")
    hardware = (f"Hardware: {study['hardware']}. Command: `{study['command']}`." if study
                else f"Hardware: not recorded ({STUDY} is written by the `run` subcommand only).")
    return lines + ["", hardware, *boundary_lines(runs, summary)]


def boundary_lines(runs: list[Run], summary: dict) -> list[str]:
    """One line per segment boundary: the gate change there beside the changes around it."""
    lines = [f"* {r.label}, resumed after epoch {b['after_epoch']}: largest gate change into epoch "
             f"{b['after_epoch'] + 1} {b['gate_change']:.2e}, median of the epochs around "
             f"{b['median_change_nearby']:.2e}"
             for r in runs for b in summary["runs"][r.label].get("segment_boundaries", [])
             if b["median_change_nearby"] is not None]
    return ["", "Segment boundaries (the resume is exact: no jump is expected):", "", *lines] if lines else []


def results_table(runs: list[Run], summary: dict) -> list[str]:
    lines = ["| run | gate | epochs | arch steps | skips, first -> last epoch (max) | polarised share, final "
             "| first epoch with a gate > 0.85 | retrained test top-1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        s = summary["runs"][r.label]
        skips = s["skips_per_epoch"]
        polar = f"{s['polarised_share']:.1%}" if "polarised_share" in s else "n/a (softmax)"
        first = ("never" if s.get("first_epoch_gate_above_0_85") is None else s["first_epoch_gate_above_0_85"]) \
            if r.gate == "sigmoid" else "n/a (softmax)"
        retrain = s.get("retrain")
        acc = f"{retrain['test_top1']:.2f}% ({retrain['rule']} rule)" if retrain else "not retrained"
        lines.append(f"| {r.label} | {r.gate} | {s['epochs']} | {s['arch_steps']} | {skips[0]} -> {skips[-1]} "
                     f"({max(skips)}) | {polar} | {first} | {acc} |")
    return lines


def per_epoch_table(runs: list[Run], summary: dict) -> list[str]:
    n = max(len(r.epochs) for r in runs)
    cols = []
    for r in runs:
        cols.append((f"{r.label} skips", summary["runs"][r.label]["skips_per_epoch"]))
        if "polarised_share_per_epoch" in summary["runs"][r.label]:
            shares = summary["runs"][r.label]["polarised_share_per_epoch"]
            cols.append((f"{r.label} polarised", [f"{v:.1%}" for v in shares]))
        eigen = summary["runs"][r.label].get("hessian_eigen")
        if eigen is not None:
            by_epoch = dict(zip(eigen["epochs"], eigen["largest"]))
            cols.append((f"{r.label} eigenvalue", [f"{by_epoch[e + 1]:.4g}" if e + 1 in by_epoch else ""
                                                   for e in range(n)]))
    lines = ["| epoch | " + " | ".join(c[0] for c in cols) + " |", "| --- " * (len(cols) + 1) + "|"]
    for e in range(n):
        lines.append(f"| {e + 1} | " + " | ".join(str(c[1][e]) if e < len(c[1]) else "" for c in cols) + " |")
    return lines


def eigen_section(runs: list[Run], summary: dict, plot: Path) -> list[str]:
    """The collapse instrument's curve and, per run, where the DARTS-ES rule stopped it."""
    lines = ["## Dominant eigenvalue of the architecture Hessian (RobustDARTS)", "",
             "Largest algebraic eigenvalue of the Hessian of the validation cross entropy with respect to all "
             "alphas, recorded by the search (`--hessian_every`); it grows as a DARTS search degrades. "
             "Values per epoch: the table below.", "", f"![hessian eigenvalue]({plot.name})", ""]
    for r in runs:
        e = summary["runs"][r.label].get("hessian_eigen")
        if e is not None and e["early_stop"]:
            stop = e["early_stop"]
            lines.append(f"* {r.label}: DARTS-ES stopped the search after epoch {stop['stopped_after'] + 1} "
                         f"(local average x{stop['ratio']:.2f}); genotype of epoch {stop['genotype_epoch'] + 1}")
        elif e is not None:
            replay, rule = e.get("darts_es_replay"), DartsES()
            lines.append(f"* {r.label}: DARTS-ES (window {rule.window}, delta {rule.delta}, factor {rule.factor}; "
                         "not switched on) "
                         + (f"would have stopped the search after epoch {replay['stopped_after']} (local average "
                            f"x{replay['ratio']:.2f}) and kept the genotype of epoch {replay['genotype_epoch']}"
                            if replay else f"would not have fired on these {len(e['epochs'])} records"))
    return lines + [""]


def cell_section(runs: list[Run], out: Path) -> list[str]:
    lines = []
    cells = out / "cells"
    has_dot = shutil.which("dot") is not None
    for r in runs:
        lines.append(f"### {r.label}")
        lines.append("")
        for rule in RULES:
            g = r.genotype(rule)
            lines.append(f"* {rule}: `{g.to_text()}`")
        if not has_dot:
            lines.append("")
            lines.append("Graphviz `dot` was not found when this report was made: the cells are drawn only as "
                         "`.dot` sources under `cells/`.")
        for rule in RULES:
            g = r.genotype(rule)
            if not g.normal and not g.reduce:
                lines.append(f"\n{rule}: both cells are empty, nothing to draw.")
                continue
            for p in render_genotype(g, cells, f"{r.label}_{rule}"):
                if p.suffix == ".png":
                    lines.append(f"\n![{p.stem}](cells/{p.name})")
        lines.append("")
    return lines


def _facts(run: Run, s: dict) -> dict[str, str]:
    """What the comparison shows of one run (``s``: its entry in its study's summary.json)."""
    skips = s["skips_per_epoch"]
    lo, hi = run.final_gate_range()   # not in summaries written before 2026-12-07
    sigmoid = run.gate == "sigmoid"
    first = s.get("first_epoch_gate_above_0_85")
    retrain = s.get("retrain")
    return {"arch steps": f"{s['arch_steps']:,}" if s.get("arch_steps") is not None else "?",
            "normal-cell skips, final (max)": f"{skips[-1]} ({max(skips)})",
            "gates of the final epoch, min-max": f"{lo:.3f}-{hi:.3f}",
            "polarised, final": f"{s['polarised_share']:.1%}" if sigmoid else "n/a",
            "first epoch with a gate > 0.85": ("never" if first is None else str(first)) if sigmoid else "n/a",
            "retrained test top-1": f"{retrain['test_top1']:.2f}%" if retrain else "not retrained"}


def comparison_section(runs: list[Run], summary: dict, out: Path) -> list[str]:
    """The same searches at another length (``compared_with``): each figure as ``other -> this``."""
    other_dir = out / summary["compared_with"]
    other_summary = json.loads((other_dir / "summary.json").read_text())
    other = {r.label: r for r in study_runs(other_dir)}
    pairs = [(r, other[r.label]) for r in runs if r.label in other]
    if not pairs:
        return []
    keys = list(_facts(pairs[0][0], summary["runs"][pairs[0][0].label]))
    lines = [f"## Against `{summary['compared_with']}`", "",
             f"Each cell: `{summary['compared_with']}` -> this study, same sizes and seed unless the budget "
             "says otherwise.", "", "| run | " + " | ".join(keys) + " |", "| --- " * (len(keys) + 1) + "|"]
    for this, that in pairs:
        a, b = _facts(that, other_summary["runs"][that.label]), _facts(this, summary["runs"][this.label])
        lines.append(f"| {this.label} | " + " | ".join(f"{a[k]} -> {b[k]}" for k in keys) + " |")
    return lines + [""]


def report(runs: list[Run], out: Path, compare: Path | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    summary = write_summary(runs, out, compare)
    skips = plot_skips(runs, out)
    heat = plot_gate_heatmaps(runs, out)
    hists = [plot_gate_histograms(r, out) for r in runs]
    eigen = plot_eigenvalues(runs, out)
    body = ["# Collapse study", "",
            "Generated by `scripts/collapse_study.py` from the run folders; every number is in "
            "`summary.json` and recomputable from each run's `alpha_history.npz`. Epochs count from 1. "
            "Skips: skip connections in the normal cell derived by the DARTS rule from that epoch's gates. "
            f"Polarised: share of all gates of both cells below {POLAR_LOW} or above {POLAR_HIGH}.", "",
            "## Results", "", *results_table(runs, summary), "",
            *(comparison_section(runs, summary, out) if "compared_with" in summary else []),
            "## Budget", "", *budget_lines(runs, summary), "",
            "## Skip connections per epoch", "", f"![skip connections]({skips.name})", "",
            "## Gate values per epoch (Figure 1 of the Fair DARTS paper)", "", f"![gate heat map]({heat.name})", "",
            *[f"![{p.stem}]({p.name})" for p in hists], "",
            *(eigen_section(runs, summary, eigen) if eigen else []),
            "## Per epoch", "", *per_epoch_table(runs, summary), "",
            "## Final cells and derived genotypes", "", *cell_section(runs, out)]
    path = out / "report.md"
    path.write_text("\n".join(body) + "\n")
    print("\n".join(results_table(runs, summary)))
    return path


# ----- retrain --------------------------------------------------------------------------------
def retrain_rule(run: Run) -> tuple[str, str]:
    """The rule whose genotype is retrained, and why: Fair DARTS' threshold_sparse for sigmoid
    runs and the DARTS rule for softmax runs; the DARTS rule when the threshold left a cell empty."""
    if run.gate != "sigmoid":
        return "darts", "softmax gates: the DARTS rule"
    g = run.genotype("threshold_sparse")
    if g.normal and g.reduce:
        return "threshold_sparse", "sigmoid gates: Fair DARTS' threshold_sparse rule"
    return "darts", (f"threshold_sparse at {run.config.get('op_threshold', GATE_PASSED)} left "
                     f"{'both cells' if not g.normal and not g.reduce else 'a cell'} empty: the DARTS rule")


def retrain_command(run: Run, genotype_file: Path, save: Path) -> list[str]:
    """``train.py`` on the search's data, sizes, seed and epochs (the search's whole ``--subset``:
    both halves; the full test set)."""
    cfg = run.config
    cmd = [sys.executable, "train.py", "--dataset", cfg["dataset"], "--data", str(cfg["data"]), "--arch",
           str(genotype_file), "--epochs", str(cfg["epochs"]), "--batch_size", str(cfg["batch_size"]),
           "--init_channels", str(cfg["init_channels"]), "--layers", str(cfg["layers"]), "--seed", str(cfg["seed"]),
           "--device", str(cfg["device"]), "--threads", "1", "--save", str(save), "--no-progress"]
    for key in ("subset", "image_size", "max_steps_per_epoch"):
        if cfg.get(key) is not None:
            cmd += [f"--{key}", str(cfg[key])]
    return cmd


def final_test_top1(log: Path) -> float:
    hits = [float(m.group(2)) for m in map(TEST_TOP1.search, log.read_text().splitlines()) if m]
    if not hits:
        raise UserError(f"{log} has no test accuracy; did the retraining finish?")
    return hits[-1]


def retrain(runs: list[Run], out: Path) -> None:
    """Retrain every run's derived genotype, in parallel (one thread each), into ``out/retrain``."""
    taken = [str(out / "retrain" / r.label) for r in runs if (out / "retrain" / r.label).exists()]
    if taken:
        raise UserError(f"{', '.join(taken)} exist: move them away (or delete them) to retrain again")
    jobs = []
    for r in runs:
        rule, why = retrain_rule(r)
        genotype_file = out / "retrain" / f"{r.label}_{rule}.json"
        genotype_file.parent.mkdir(parents=True, exist_ok=True)
        genotype_file.write_text(r.genotype(rule).to_json())
        save = out / "retrain" / r.label
        cmd = retrain_command(r, genotype_file.resolve(), save.resolve())
        print(f"== retrain {r.label}: {' '.join(cmd[1:])}", flush=True)
        jobs.append((r, rule, why, save, subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                                          stdout=subprocess.DEVNULL)))
    failed = [r.label for r, *_, p in jobs if p.wait() != 0]
    if failed:
        raise UserError(f"retraining failed for {', '.join(failed)}; see {out / 'retrain'}/<label>/log.txt")
    path = out / "summary.json"
    summary = json.loads(path.read_text())
    for r, rule, why, save, _ in jobs:
        log = save / "log.txt"
        kept = out / "retrain" / f"{r.label}_log.txt"     # kept in git; the run folder is not
        shutil.copyfile(log, kept)
        summary["runs"][r.label]["retrain"] = {
            "search_folder": os.path.relpath(r.folder, out), "rule": rule, "why": why,
            "genotype": r.genotype(rule).to_dict(), "epochs": r.config["epochs"], "test_top1": final_test_top1(log),
            "log": os.path.relpath(kept, out),
            "wall_seconds": log_span(log.read_text().splitlines())}
    path.write_text(json.dumps(summary, indent=1) + "\n")


def study_runs(out: Path) -> list[Run]:
    """The runs of a study folder, from the LABEL=RUN_DIR list that ``run``/``report`` kept."""
    path = out / "summary.json"
    if not path.is_file():
        raise UserError(f"{path} not found: run `report` (or `run`) with --out {out} first")
    return [load_run(label, out / s["folder"]) for label, s in json.loads(path.read_text())["runs"].items()]


# ----- run ----------------------------------------------------------------------------------
PLANS = {
    "DARTS": ["darts/train_search.py"],
    "DARTS_noise": ["darts/train_search.py", "--noise_darts", "--noise_type", "N"],
    "FairDARTS": ["train_search.py", "--aux_loss_weight", "10"],
}


def hardware(device: str) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    text = f"{cpu}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    if device != "cpu" and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def search_command(label: str, args: argparse.Namespace, save: Path) -> list[str]:
    cmd = [sys.executable, *PLANS[label], "--dataset", args.dataset, "--data", args.data, "--epochs", str(args.epochs),
           "--seed", str(args.seed), "--init_channels", str(args.init_channels), "--layers", str(args.layers),
           "--batch_size", str(args.batch_size), "--device", args.device, "--threads", "1", "--no-progress",
           "--plot_every", str(args.epochs)]  # the alpha plots once, at the end: seconds per drawing
    for key in ("subset", "image_size", "max_steps_per_epoch", "hessian_every"):
        if getattr(args, key) is not None:
            cmd += [f"--{key}", str(getattr(args, key))]
    # A finished run is kept, a killed one resumed from its checkpoint, a new one started.
    return cmd + (["--resume", str(save)] if (save / "checkpoint.pt").is_file() else ["--save", str(save)])


SMALL_ARTEFACTS = ("alpha_history.npz", "config.yaml", "log.txt", "genotype.json")
OPTIONAL_ARTEFACTS = (EIGEN_FILE,)   # only searches with the collapse instrument on write it


def keep_small_artefacts(run_dir: Path, dest: Path) -> Path:
    """Copy the files the report reads (kilobytes, fit for git) out of a run folder, whose
    checkpoint and TensorBoard events stay under ``runs/`` (git-ignored)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in SMALL_ARTEFACTS:
        shutil.copyfile(run_dir / name, dest / name)
    for name in OPTIONAL_ARTEFACTS:
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, dest / name)
    return dest


def run_all(args: argparse.Namespace, argv: list[str]) -> Path:
    """The three searches in parallel processes (one thread each), then the report."""
    runs_dir = args.out / "runs"
    procs = []
    for label in PLANS:
        save = (runs_dir / label).resolve()
        if (save / "genotype.json").is_file():
            print(f"== {label}: finished run in {save}, kept", flush=True)
            continue
        cmd = search_command(label, args, save)
        print(f"== {label}: {' '.join(cmd[1:])}", flush=True)
        save.parent.mkdir(parents=True, exist_ok=True)
        procs.append((label, save, subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                                    stdout=subprocess.DEVNULL)))
    failed = [f"{label} (exit {p.returncode}, see {save}/log.txt)" for label, save, p in procs if p.wait() != 0]
    if failed:
        raise UserError(f"search failed: {'; '.join(failed)}; run the same command again to resume")
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python scripts/collapse_study.py", *argv])
    (args.out / STUDY).write_text(json.dumps({"hardware": hardware(args.device), "command": command}, indent=1) + "\n")
    runs = [load_run(label, keep_small_artefacts(runs_dir / label, args.out / label)) for label in PLANS]
    path = report(runs, args.out, args.compare)
    if args.retrain:
        retrain(runs, args.out)
        path = report(runs, args.out)
    return path


# ----- CLI ----------------------------------------------------------------------------------
def build_parser() -> CLIParser:
    p = CLIParser(prog="python scripts/collapse_study.py", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="summary.json, plots and report.md from finished run folders")
    rep.add_argument("--runs", nargs="+", required=True, help="LABEL=RUN_DIR entries")
    rep.add_argument("--compare", type=Path, default=None,
                     help="another study folder (e.g. the same searches at another length): a table of both")
    rep.add_argument("--out", type=Path, default=Path("reports/collapse_long"),
                     help="folder of summary.json, the plots and report.md (default: reports/collapse_long)")
    ret = sub.add_parser("retrain", help="retrain the derived genotypes of a reported study, then report again")
    ret.add_argument("--out", type=Path, default=Path("reports/collapse_long"),
                     help="the study folder: its summary.json names the runs (default: reports/collapse_long)")
    run = sub.add_parser("run", help="run the three searches in parallel, then report")
    run.add_argument("--dataset", default="fashion_mnist",
                     help="dataset of the three searches (default: fashion_mnist)")
    run.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                     help="dataset root (default: /usr/share/datasets/fashion-mnist)")
    run.add_argument("--subset", type=int, default=None, help="first N training images only (default: all)")
    run.add_argument("--epochs", type=int, default=50, help="search epochs of each search (default: 50)")
    run.add_argument("--seed", type=int, default=2, help="random seed shared by the three searches (default: 2)")
    run.add_argument("--init_channels", type=int, default=16, help="channels of the first cell (default: 16)")
    run.add_argument("--layers", type=int, default=8, help="cells of the supernet (default: 8)")
    run.add_argument("--batch_size", type=int, default=64, help="batch size of every search (default: 64)")
    run.add_argument("--image_size", type=int, default=None, help="resize the images (e.g. 16 for a CPU run)")
    run.add_argument("--max_steps_per_epoch", type=int, default=None,
                     help="cap the search steps of every epoch (smoke runs; default: no cap)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--hessian_every", type=int, default=None,
                     help="record the largest eigenvalue of the architecture Hessian every N epochs in each search "
                          "(the collapse instrument; also when a search resumes; default: off)")
    run.add_argument("--compare", type=Path, default=None,
                     help="another study folder (e.g. the same searches at another length): a table of both")
    run.add_argument("--retrain", action=argparse.BooleanOptionalAction, default=False,
                     help="retrain the derived genotypes afterwards (default: off)")
    run.add_argument("--out", type=Path, default=Path("reports/collapse_long"),
                     help="folder of the run folders, summary, plots and report (default: reports/collapse_long)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        path = report(parse_run_specs(args.runs), args.out, args.compare)
    elif args.command == "retrain":
        runs = study_runs(args.out)
        retrain(runs, args.out)
        path = report(runs, args.out)
    else:
        path = run_all(args, sys.argv[1:] if argv is None else argv)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
