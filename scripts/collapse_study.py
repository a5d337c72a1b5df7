"""The collapse study: DARTS, DARTS with noisy skips and Fair DARTS under one budget.

DARTS' softmax makes the ops of an edge compete; skip connections win that competition
unfairly and pile up in the derived normal cell (the collapse). Fair DARTS gates each op with
its own sigmoid and pushes the gates to 0 or 1 with the zero-one loss. This script shows it:

* ``run``: three searches with identical data, budget and seed, then ``report``;
* ``report``: from finished run folders, per epoch the number of skip connections in the
  derived normal cell, the stacked share of dominant ops (the paper's Figure 1), and the
  distribution of the final Fair DARTS sigmoid values; PNG plots and a markdown table.

Per-epoch cells are derived with the DARTS rule (2 strongest edges per node, strongest op)
from each run's gate values, so that all three are counted the same way.

    python scripts/collapse_study.py run --dataset fashion_mnist --data /usr/share/datasets/fashion-mnist \
        --subset 512 --epochs 6 --out reports/collapse
    python scripts/collapse_study.py report --runs DARTS=runs/a "DARTS+noise=runs/b" FairDARTS=runs/c \
        --out reports/collapse
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fairdarts.errors import CLIParser, UserError, run_cli  # noqa: E402
from fairdarts.search_space import derive, get_genotype, resolve_primitives  # noqa: E402


@dataclass
class RunCurves:
    """What the report needs from one finished search."""

    label: str
    gate: str
    primitives: tuple[str, ...]
    epochs: np.ndarray          # [E]
    gated_normal: np.ndarray    # [E, 14, n_ops]
    final_genotype: str

    def skip_counts(self) -> list[int]:
        return [sum(op == "skip_connect" for op, _ in derive(w, self.primitives, "darts"))
                for w in self.gated_normal]

    def dominant_share(self) -> np.ndarray:
        """[E, n_ops]: share of the 14 normal edges whose strongest op (none excluded) is each op."""
        candidates = [k for k, p in enumerate(self.primitives) if p != "none"]
        shares = np.zeros((len(self.epochs), len(self.primitives)))
        for e, w in enumerate(self.gated_normal):
            best = np.asarray(candidates)[np.argmax(w[:, candidates], axis=1)]
            for k in best:
                shares[e, k] += 1.0 / len(best)
        return shares


def load_run(label: str, run_dir: Path) -> RunCurves:
    history = run_dir / "alpha_history.npz"
    config = run_dir / "config.yaml"
    if not history.is_file() or not config.is_file():
        raise UserError(f"{run_dir} is not a finished search run folder (needs alpha_history.npz and config.yaml)")
    cfg = yaml.safe_load(config.read_text())
    with np.load(history) as data:
        epochs, gated = data["epochs"], data["gated_normal"]
    final = run_dir / "genotype.json"
    genotype = get_genotype(final).to_text() if final.is_file() else "(no final genotype)"
    return RunCurves(label, cfg.get("gate", "sigmoid"), resolve_primitives(cfg.get("primitives", "fairdarts")),
                     epochs, gated, genotype)


def plot_report(runs: list[RunCurves], out: Path) -> list[Path]:
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig: Figure, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        (out / name).write_bytes(buf.getvalue())
        written.append(out / name)

    fig = Figure(figsize=(5, 3.2), dpi=100)
    ax = fig.subplots()
    for r in runs:
        ax.plot(r.epochs + 1, r.skip_counts(), marker="o", label=r.label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("skip connections in normal cell")
    ax.set_ylim(-0.2, 8.2)
    ax.legend()
    ax.set_title("Skip connections in the derived normal cell")
    fig.tight_layout()
    save(fig, "skip_connections.png")

    fig = Figure(figsize=(4 * len(runs), 3.2), dpi=100)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    for ax, r in zip(axes, runs):
        share = r.dominant_share()
        keep = [k for k, p in enumerate(r.primitives) if p != "none"]
        ax.stackplot(r.epochs + 1, share[:, keep].T, labels=[r.primitives[k] for k in keep])
        ax.set_title(f"{r.label}: dominant op share", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
    axes[-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    save(fig, "dominant_ops.png")

    sigmoid_runs = [r for r in runs if r.gate == "sigmoid"]
    if sigmoid_runs:
        fig = Figure(figsize=(5, 3.2), dpi=100)
        ax = fig.subplots()
        for r in sigmoid_runs:
            ax.hist(r.gated_normal[-1].ravel(), bins=20, range=(0, 1), alpha=0.7, label=f"{r.label} normal")
        ax.set_xlabel("sigmoid gate value (final epoch)")
        ax.set_ylabel("count")
        ax.legend()
        ax.set_title("Final Fair DARTS gate values")
        fig.tight_layout()
        save(fig, "sigmoid_distribution.png")
    return written


def markdown_table(runs: list[RunCurves]) -> str:
    lines = ["| run | gate | epochs | skips (first -> last epoch) | final gates < 0.1 or > 0.9 | final genotype |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        skips = r.skip_counts()
        last = r.gated_normal[-1]
        polar = f"{np.mean((last < 0.1) | (last > 0.9)):.0%}" if r.gate == "sigmoid" else "n/a (softmax)"
        lines.append(f"| {r.label} | {r.gate} | {len(r.epochs)} | {skips[0]} -> {skips[-1]} | {polar} | "
                     f"`{r.final_genotype}` |")
    return "\n".join(lines) + "\n"


def report(run_specs: list[str], out: Path, budget: str | None = None) -> Path:
    runs = []
    for spec in run_specs:
        label, sep, path = spec.partition("=")
        if not sep:
            raise UserError(f"--runs takes LABEL=RUN_DIR entries, got {spec!r}")
        runs.append(load_run(label, Path(path)))
    pictures = plot_report(runs, out)
    table = markdown_table(runs)
    head = ["# Collapse study", ""]
    if budget:
        head += [budget, ""]
    body = head + [table, ""] + [f"![{p.stem}]({p.name})" for p in pictures]
    (out / "report.md").write_text("\n".join(body) + "\n")
    print(table)
    return out / "report.md"


def run_all(args: argparse.Namespace) -> Path:
    """Three searches with the same data, budget and seed; then the report."""
    common = ["--dataset", args.dataset, "--data", args.data, "--epochs", str(args.epochs),
              "--seed", str(args.seed), "--init_channels", str(args.init_channels), "--layers", str(args.layers),
              "--batch_size", str(args.batch_size), "--device", args.device]
    if args.subset:
        common += ["--subset", str(args.subset)]
    if args.image_size:
        common += ["--image_size", str(args.image_size)]
    # One intra-op thread per search: on a small shared CPU two threads thrash (many times slower).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs_dir = args.out / "runs"
    plans = {
        "DARTS": ["darts/train_search.py"],
        "DARTS+noise": ["darts/train_search.py", "--noise_darts", "--noise_type", "N",
                        "--max_step", str(max(1, args.epochs // 2))],
        "FairDARTS": ["train_search.py", "--aux_loss_weight", "10", "--parse_method", "threshold_sparse"],
    }
    specs = []
    for label, cmd in plans.items():
        save = runs_dir / label.replace("+", "_")
        if not (save / "genotype.json").is_file():
            flags = ["--resume", str(save)] if (save / "checkpoint.pt").is_file() else ["--save", str(save)]
            print(f"== {label}: {' '.join(cmd + common)}", flush=True)
            result = subprocess.run([sys.executable, *cmd, *common, *flags, "--no-progress"], cwd=REPO, env=env)
            if result.returncode != 0:
                raise UserError(f"the {label} search failed (exit {result.returncode}); see {save}/log.txt")
        specs.append(f"{label}={save}")
    budget = (f"Budget (identical for the three searches): {args.dataset}, "
              f"{args.subset or 'all'} training images (half for the weights, half for the alphas), "
              f"{args.image_size or 'native'} px, {args.epochs} epochs, batch {args.batch_size}, "
              f"{args.init_channels} channels, {args.layers} layers, seed {args.seed}, device {args.device}, "
              f"{args.threads} thread(s) per search. Made by `python scripts/collapse_study.py "
              f"{' '.join(sys.argv[1:])}`.")
    return report(specs, args.out, budget)


def build_parser() -> CLIParser:
    p = CLIParser(prog="python scripts/collapse_study.py", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="plots and table from finished run folders")
    rep.add_argument("--runs", nargs="+", required=True, help="LABEL=RUN_DIR entries")
    rep.add_argument("--out", type=Path, default=Path("reports/collapse"),
                     help="folder of the plots and table (default: reports/collapse)")
    run = sub.add_parser("run", help="run the three searches, then report")
    run.add_argument("--dataset", default="cifar10", help="dataset of the three searches (default: cifar10)")
    run.add_argument("--data", default="data", help="dataset root (default: data)")
    run.add_argument("--subset", type=int, default=None, help="first N training images only (default: all)")
    run.add_argument("--epochs", type=int, default=50, help="search epochs of each search (default: 50)")
    run.add_argument("--seed", type=int, default=2, help="random seed shared by the three searches (default: 2)")
    run.add_argument("--init_channels", type=int, default=16, help="channels of the first cell (default: 16)")
    run.add_argument("--layers", type=int, default=8, help="cells of the supernet (default: 8)")
    run.add_argument("--batch_size", type=int, default=64, help="batch size of every search (default: 64)")
    run.add_argument("--image_size", type=int, default=None, help="resize the images (e.g. 16 for a fast CPU run)")
    run.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each search (default: 1)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--out", type=Path, default=Path("reports/collapse"),
                     help="folder of the run folders, plots and table (default: reports/collapse)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = report(args.runs, args.out) if args.command == "report" else run_all(args)
    print(f"report written to {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
