"""What a search leaves in its run folder, besides the log, config and checkpoint.

* ``genotypes/epoch_XXX.json`` / ``.txt`` per epoch; ``genotype.json`` / ``genotype.txt`` final
  (JSON for :func:`fairdarts.get_genotype`, the official ``Genotype(...)`` text for humans);
* ``<group>_weight.npy``: the final gate values of each gate group of the search space:
  ``normal_weight.npy`` / ``reduce_weight.npy`` (cell, 14 x n_ops, the official files) or
  ``mobile_weight.npy`` (mobile, 19 x n_ops);
* ``alpha_history.npz``: raw alphas and gate values per epoch (``raw_<group>``, ``gated_<group>``);
* ``plots/alpha_<group>.png``: gate value of every op per edge (cell; the nodes named as in the
  cell pictures, ``c_{k-2}``, ``c_{k-1}``, 0-3) or per layer (mobile) over the epochs.
  Figures are built with :class:`matplotlib.figure.Figure` (no pyplot registry), so nothing
  survives the call: the official plots leaked ~275 MiB per figure per epoch.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from fairdarts.run_dir import atomic_write_bytes, atomic_write_text
from fairdarts.search_space import Genotype, MobileGenotype
from fairdarts.search_space.run_genotype import CELLS
from fairdarts.search_space.topology import cell_edges


def write_genotype(run_dir: Path, genotype: Genotype | MobileGenotype, epoch: int | None = None) -> None:
    """Per-epoch files under ``genotypes/``; ``epoch=None`` writes the final top-level pair."""
    stem = run_dir / "genotype" if epoch is None else run_dir / "genotypes" / f"epoch_{epoch:03d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stem.with_suffix(".json"), genotype.to_json() + "\n")
    atomic_write_text(stem.with_suffix(".txt"), genotype.to_text() + "\n")


def write_gate_weights(run_dir: Path, gates: Mapping[str, np.ndarray]) -> None:
    """``<group>_weight.npy`` for each gate group (float32, like the official files)."""
    for name, w in gates.items():
        buf = io.BytesIO()
        np.save(buf, np.asarray(w, dtype=np.float32))
        atomic_write_bytes(run_dir / f"{name}_weight.npy", buf.getvalue())


@dataclass
class AlphaHistory:
    """Alphas after every epoch: raw values and gate values, one [rows, n_ops] array per gate
    group (``normal`` and ``reduce`` for the cell space, ``mobile`` for S2)."""

    groups: tuple[str, ...] = CELLS
    epochs: list[int] = field(default_factory=list)
    raw: dict[str, list[np.ndarray]] = field(default_factory=dict)
    gated: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for store in (self.raw, self.gated):
            for c in self.groups:
                store.setdefault(c, [])

    def record(self, epoch: int, raw: Sequence[torch.Tensor], gated: Sequence[torch.Tensor]) -> None:
        self.epochs.append(epoch)
        for c, r, g in zip(self.groups, raw, gated):
            self.raw[c].append(r.detach().double().cpu().numpy().copy())
            self.gated[c].append(g.detach().double().cpu().numpy().copy())

    def state_dict(self) -> dict:
        """Tensors and ints only: loadable with ``weights_only=True``."""
        stack = lambda xs: torch.from_numpy(np.stack(xs)) if xs else torch.empty(0)  # noqa: E731
        return {"epochs": list(self.epochs),
                "raw": {c: stack(self.raw[c]) for c in self.groups},
                "gated": {c: stack(self.gated[c]) for c in self.groups}}

    @classmethod
    def from_state_dict(cls, state: dict) -> "AlphaHistory":
        h = cls(groups=tuple(state["raw"]), epochs=list(state["epochs"]))
        for c in h.groups:
            h.raw[c] = [t.numpy() for t in state["raw"][c]]
            h.gated[c] = [t.numpy() for t in state["gated"][c]]
        return h

    def save_npz(self, path: Path) -> None:
        arrays = {f"{kind}_{c}": np.stack(getattr(self, kind)[c]) for kind in ("raw", "gated") for c in self.groups}
        buf = io.BytesIO()
        np.savez(buf, epochs=np.asarray(self.epochs), **arrays)
        atomic_write_bytes(path, buf.getvalue())


def node_name(index: int) -> str:
    """A cell state as the cell pictures of :mod:`fairdarts.visualize` name it: the inputs
    c_{k-2}, c_{k-1} (as matplotlib mathtext, so that the plots draw the subscripts), then the
    intermediate nodes 0, 1, 2, ..."""
    return ("$c_{k-2}$", "$c_{k-1}$")[index] if index < 2 else str(index - 2)


def edge_labels(steps: int = 4) -> list[str]:
    """``source -> node`` of every edge, in the row order of the weight matrices."""
    return [f"{node_name(src)} \u2192 {node_name(dst)}" for src, dst in cell_edges(steps)]


def plot_alpha_history(history: AlphaHistory, primitives: Sequence[str], out_dir: Path,
                       row_labels: Callable[[int], list[str]], title: Callable[[str], str]) -> list[Path]:
    """One PNG per gate group: a panel per row (edge or layer, named by ``row_labels``), a line
    per op (gate value vs epoch), one legend; ``title(group)`` heads each figure."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for cell in history.groups:
        values = np.stack(history.gated[cell])  # [epochs, rows, ops]
        n_edges = values.shape[1]
        cols = min(n_edges, 5)
        rows = -(-n_edges // cols)
        spare = rows * cols > n_edges  # an empty panel to hold the legend
        fig = Figure(figsize=(2.4 * cols + (0 if spare else 1.6), 1.9 * rows + 0.8), dpi=100, layout="constrained")
        axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        for e, label in enumerate(row_labels(n_edges)):
            for k, op in enumerate(primitives):
                axes[e].plot(history.epochs, values[:, e, k], label=op, linewidth=1.2,
                             marker="o" if len(history.epochs) < 10 else None, markersize=3)
            axes[e].set_title(label, fontsize=9, pad=3)
            axes[e].tick_params(labelsize=8)
            axes[e].xaxis.set_major_locator(MaxNLocator(integer=True))
            axes[e].grid(alpha=0.3)
        for ax in axes[n_edges:]:
            ax.axis("off")
        handles, labels = axes[0].get_legend_handles_labels()
        if spare:
            axes[-1].legend(handles, labels, loc="center", fontsize=8, title="op", title_fontsize=9)
        else:
            fig.legend(handles, labels, loc="outside right center", fontsize=8, title="op", title_fontsize=9)
        fig.supxlabel("epoch", fontsize=9)
        fig.supylabel("gate value", fontsize=9)
        fig.suptitle(title(cell), fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        fig.clear()
        path = out_dir / f"alpha_{cell}.png"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths
