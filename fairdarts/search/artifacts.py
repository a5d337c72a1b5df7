"""What a search leaves in its run folder, besides the log, config and checkpoint.

* ``genotypes/epoch_XXX.json`` / ``.txt`` per epoch; ``genotype.json`` / ``genotype.txt`` final
  (JSON for :func:`fairdarts.get_genotype`, the official ``Genotype(...)`` text for humans);
* ``normal_weight.npy`` / ``reduce_weight.npy``: the final gate values, 14 x n_ops (official files);
* ``alpha_history.npz``: raw alphas and gate values per epoch;
* ``plots/alpha_{normal,reduce}.png``: gate value of every op per edge over the epochs.
  Figures are built with :class:`matplotlib.figure.Figure` (no pyplot registry), so nothing
  survives the call: the official plots leaked ~275 MiB per figure per epoch.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from fairdarts.run_dir import atomic_write_bytes, atomic_write_text
from fairdarts.search_space import Genotype, derive, derived_form, genotypes_with_edges

CELLS = ("normal", "reduce")


def derive_genotype(normal: np.ndarray, reduce: np.ndarray, primitives: Sequence[str], method: str,
                    op_threshold: float | None, steps: int = 4) -> Genotype:
    """A genotype from the two gated weight matrices (may have empty Fair DARTS cells)."""
    edges_n = derive(normal, primitives, method, op_threshold, steps)
    edges_r = derive(reduce, primitives, method, op_threshold, steps)
    return genotypes_with_edges(edges_n, edges_r, derived_form(method), steps)


def write_genotype(run_dir: Path, genotype: Genotype, epoch: int | None = None) -> None:
    """Per-epoch files under ``genotypes/``; ``epoch=None`` writes the final top-level pair."""
    stem = run_dir / "genotype" if epoch is None else run_dir / "genotypes" / f"epoch_{epoch:03d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), genotype.to_json() + "\n")
    atomic_write_text(stem.with_suffix(".txt"), genotype.to_text() + "\n")


def write_gate_weights(run_dir: Path, normal: np.ndarray, reduce: np.ndarray) -> None:
    for name, w in zip(CELLS, (normal, reduce)):
        buf = io.BytesIO()
        np.save(buf, np.asarray(w, dtype=np.float32))
        atomic_write_bytes(run_dir / f"{name}_weight.npy", buf.getvalue())


@dataclass
class AlphaHistory:
    """Alphas after every epoch: raw values and gate values, one [14, n_ops] array per cell."""

    epochs: list[int] = field(default_factory=list)
    raw: dict[str, list[np.ndarray]] = field(default_factory=lambda: {c: [] for c in CELLS})
    gated: dict[str, list[np.ndarray]] = field(default_factory=lambda: {c: [] for c in CELLS})

    def record(self, epoch: int, raw: Sequence[torch.Tensor], gated: Sequence[torch.Tensor]) -> None:
        self.epochs.append(epoch)
        for c, r, g in zip(CELLS, raw, gated):
            self.raw[c].append(r.detach().double().cpu().numpy().copy())
            self.gated[c].append(g.detach().double().cpu().numpy().copy())

    def state_dict(self) -> dict:
        """Tensors and ints only: loadable with ``weights_only=True``."""
        stack = lambda xs: torch.from_numpy(np.stack(xs)) if xs else torch.empty(0)  # noqa: E731
        return {"epochs": list(self.epochs),
                "raw": {c: stack(self.raw[c]) for c in CELLS},
                "gated": {c: stack(self.gated[c]) for c in CELLS}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "AlphaHistory":
        h = cls(epochs=list(state["epochs"]))
        for c in CELLS:
            h.raw[c] = [t.numpy() for t in state["raw"][c]]
            h.gated[c] = [t.numpy() for t in state["gated"][c]]
        return h

    def save_npz(self, path: Path) -> None:
        arrays = {f"{kind}_{c}": np.stack(getattr(self, kind)[c]) for kind in ("raw", "gated") for c in CELLS}
        buf = io.BytesIO()
        np.savez(buf, epochs=np.asarray(self.epochs), **arrays)
        atomic_write_bytes(path, buf.getvalue())


def edge_labels(steps: int = 4) -> list[str]:
    return [f"{j}->{i + 2}" for i in range(steps) for j in range(i + 2)]


def plot_alpha_history(history: AlphaHistory, primitives: Sequence[str], out_dir: Path) -> list[Path]:
    """One small PNG per cell: a panel per edge, a line per op (gate value vs epoch)."""
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for cell in CELLS:
        values = np.stack(history.gated[cell])  # [epochs, edges, ops]
        n_edges = values.shape[1]
        cols = min(n_edges, 5)
        rows = -(-n_edges // cols)
        fig = Figure(figsize=(2.0 * cols, 1.5 * rows + 0.5), dpi=72)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.06, top=0.9, wspace=0.08, hspace=0.3)
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        for e, label in enumerate(edge_labels(_steps_for(n_edges))):
            for k, op in enumerate(primitives):
                axes[e].plot(history.epochs, values[:, e, k], label=op, linewidth=1)
            axes[e].set_title(f"edge {label}", fontsize=7, pad=2)
            axes[e].tick_params(labelsize=6)
            axes[e].label_outer()
        for ax in axes[n_edges:]:
            ax.set_visible(False)
        axes[0].legend(fontsize=6, loc="best")
        fig.suptitle(f"{cell} cell: gate value per op", fontsize=9)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        fig.clear()
        path = out_dir / f"alpha_{cell}.png"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _steps_for(n_edges: int) -> int:
    steps, total = 0, 0
    while total < n_edges:
        total += steps + 2
        steps += 1
    return steps
