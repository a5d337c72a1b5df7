"""The two search spaces behind one small interface, so that the search loop, its run folder
and re-derivation exist once.

* ``cell`` (S1, alias ``s1``): the DARTS cell; gates in two groups, ``normal`` and ``reduce``
  (14 edges x ops each), derived with :func:`fairdarts.search_space.derive`.
* ``mobile`` (S2, alias ``s2``): the MobileNetV2-like ImageNet chain; one group, ``mobile``
  (19 layers x ops), derived with :func:`fairdarts.search_space.derive_mobile`.

A group ``G`` is saved as ``G_weight.npy`` (its final gate values), ``raw_G`` / ``gated_G`` in
``alpha_history.npz`` and plotted as ``plots/alpha_G.png``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np
from torch import Tensor, nn

from fairdarts.errors import UserError
from fairdarts.invocation import command
from fairdarts.search.artifacts import edge_labels
from fairdarts.search_space import (
    METHODS, MOBILE_METHODS, Genotype, MobileGenotype, MobileSupernet, Supernet, derive_mobile, mobile_primitives,
    resolve_primitives,
)
from fairdarts.search_space.run_genotype import cells_advice, derive_cells, load_run_gates
from fairdarts.search_space.topology import steps_for_edges

ALIASES: dict[str, str] = {"cell": "cell", "s1": "cell", "mobile": "mobile", "s2": "mobile"}


@runtime_checkable
class SearchSupernet(Protocol):
    """What the search loop, both architects and the zero-one loss use of a supernet; the cell
    :class:`~fairdarts.search_space.Supernet` and :class:`~fairdarts.search_space.MobileSupernet`
    both have it."""

    def arch_parameters(self) -> list[nn.Parameter]: ...
    def weight_parameters(self) -> Iterator[nn.Parameter]: ...
    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...
    def gated_weights(self) -> tuple[Tensor, ...]: ...
    def forward(self, x: Tensor) -> Tensor: ...


class CellSpace:
    """S1: the DARTS cell, normal and reduction gates."""

    name = "cell"
    groups: tuple[str, ...] = ("normal", "reduce")
    methods: tuple[str, ...] = METHODS
    default_method = "threshold_sparse"

    def __init__(self, primitives: Sequence[str]):
        self.primitives = tuple(primitives)

    def build_supernet(self, cfg: Any, num_classes: int, in_channels: int) -> SearchSupernet:
        return Supernet(cfg.init_channels, num_classes, cfg.layers, self.primitives, gate=cfg.gate,
                        in_channels=in_channels, alpha_init=cfg.alpha_init)

    def derive(self, gates: Sequence[np.ndarray], method: str, op_threshold: float | None) -> Genotype:
        """A genotype from the (normal, reduce) gate matrices (may have empty Fair DARTS cells)."""
        return derive_cells(gates, self.primitives, method, op_threshold)

    def row_labels(self, n_rows: int) -> list[str]:
        """``source -> node`` of each of the ``n_rows`` edges, named as in the cell pictures."""
        return edge_labels(steps_for_edges(n_rows))

    def plot_title(self, group: str) -> str:
        return f"{group} cell: gate value of each op on each edge (source \u2192 node)"

    def scalars(self, genotype: Genotype) -> dict[str, float]:
        return {"genotype/skip_connect_normal": genotype.count_op("skip_connect", reduction=False),
                "genotype/edges_normal": len(genotype.normal), "genotype/edges_reduce": len(genotype.reduce)}

    def finish(self, genotype: Genotype, gates: Sequence[np.ndarray], run_dir: Path, log: logging.Logger,
               method: str, op_threshold: float) -> None:
        """Cell pictures when both cells have edges (and Graphviz is there); else how to re-derive."""
        advice = cells_advice(genotype, gates, self.primitives, method, op_threshold)
        if advice:
            log.info("%s: `%s %s` with these flags re-derives it, `%s --arch %s` with them retrains it directly",
                     advice, command("derive"), run_dir, command("train"), run_dir)
            return
        try:
            from fairdarts.visualize import render_genotype
        except ImportError:
            return
        try:
            render_genotype(genotype, run_dir / "plots", "genotype")
        except UserError as exc:
            log.info("cell pictures skipped: %s", exc)


class MobileSpace:
    """S2: 19 MobileNetV2-like layers, one gate matrix."""

    name = "mobile"
    groups: tuple[str, ...] = ("mobile",)
    methods: tuple[str, ...] = MOBILE_METHODS
    default_method = "threshold"

    def __init__(self, skip: bool = False):
        self.primitives = mobile_primitives(skip)

    def build_supernet(self, cfg: Any, num_classes: int, in_channels: int) -> SearchSupernet:
        return MobileSupernet(num_classes, in_channels, gate=cfg.gate, width_mult=cfg.width_mult,
                              skip=cfg.mobile_skip, alpha_init=cfg.alpha_init)

    def derive(self, gates: Sequence[np.ndarray], method: str, op_threshold: float | None) -> MobileGenotype:
        (weights,) = gates
        return derive_mobile(weights, self.primitives, method, op_threshold)

    def row_labels(self, n_rows: int) -> list[str]:
        return [f"layer {i}" for i in range(1, n_rows + 1)]

    def plot_title(self, group: str) -> str:
        return "S2: gate value of each op in each of the 19 layers"

    def scalars(self, genotype: MobileGenotype) -> dict[str, float]:
        return {"genotype/ops_kept": sum(len(ops) for ops in genotype.layers),
                "genotype/skip_layers": genotype.count_op("skip")}

    def finish(self, genotype: MobileGenotype, gates: Sequence[np.ndarray], run_dir: Path, log: logging.Logger,
               method: str, op_threshold: float) -> None:
        """Nothing to draw or advise (every layer keeps an op): the gate evolution per layer is
        ``plots/alpha_mobile.png``."""


SearchSpace = CellSpace | MobileSpace


def make_space(name: str, primitives: str = "fairdarts", mobile_skip: bool = False) -> SearchSpace:
    """The space ``name`` (or an alias) with its op columns."""
    space = ALIASES.get(name)
    if space is None:
        raise UserError(f"unknown search space {name!r}; use one of {', '.join(ALIASES)}")
    return MobileSpace(mobile_skip) if space == "mobile" else CellSpace(resolve_primitives(primitives))


def space_of(cfg: Any) -> SearchSpace:
    """The space of a search config (runs saved before S2 existed are cell searches)."""
    return make_space(getattr(cfg, "search_space", "cell"), cfg.primitives, getattr(cfg, "mobile_skip", False))


def load_gates(folder: Path, space: SearchSpace) -> list[np.ndarray]:
    """A run folder's final gate values, one array per group; one-line errors when absent."""
    return load_run_gates(folder, space.name, space.groups, len(space.primitives))


def gate_arrays(model: SearchSupernet) -> list[np.ndarray]:
    """The supernet's gate values as numpy arrays, one per group."""
    return [w.detach().cpu().numpy() for w in model.gated_weights()]
