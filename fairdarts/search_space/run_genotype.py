"""The genotype of a search run folder: its ``genotype.json``, or re-derived from its final gates.

A search leaves ``<group>_weight.npy`` (the final gate values: ``normal`` / ``reduce`` for the
cell space, ``mobile`` for S2), its ``config.yaml`` and ``genotype.json``. The gate files are
read (:func:`load_gate_weights`, :func:`load_run_gates`), the cells derived
(:func:`derive_cells`) and checked for empty ones (:func:`cells_advice`, the one sentence the
search, the derive command and ``train.py`` say) here; :func:`genotype_from_run` is the whole
route of ``train.py --arch RUN [--parse_method M]``.

It lives in ``search_space`` (it needs only the derivation rules and plain files), so that
retraining reads a run folder without importing :mod:`fairdarts.search`.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from fairdarts.errors import UserError, one_line
from fairdarts.safe_io import load_yaml, read_bytes_limited, read_text_limited
from fairdarts.search_space.derivation import METHODS, derive, derived_form, empty_cell_advice
from fairdarts.search_space.genotypes import Genotype, genotypes_with_edges, get_genotype
from fairdarts.search_space.mobile import mobile_primitives
from fairdarts.search_space.mobile_genotype import MOBILE_METHODS, MobileGenotype, derive_mobile
from fairdarts.search_space.operations import resolve_primitives

CELLS = ("normal", "reduce")
MAX_WEIGHTS_BYTES = 1 << 20  # 19 x 8 float32 gate values are under 1 KiB


def load_gate_weights(path: Path) -> np.ndarray:
    """A search's ``<group>_weight.npy``: finite real numbers, rows (edges or layers) x ops."""
    if not path.is_file():
        raise UserError(f"{path} not found; a search run folder holds the <group>_weight.npy gate values "
                        "(normal_weight.npy and reduce_weight.npy, or mobile_weight.npy)")
    data = read_bytes_limited(path, "gate weights file", MAX_WEIGHTS_BYTES)
    try:
        w = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UserError(f"cannot read {path} as a .npy array: {one_line(exc)}") from None
    if not isinstance(w, np.ndarray) or w.ndim != 2 or w.dtype.kind not in "fiu":
        raise UserError(f"{path} holds {getattr(w, 'dtype', type(w).__name__)} values of shape "
                        f"{getattr(w, 'shape', '?')}; expected real numbers, rows x ops (e.g. 14 x 7)")
    if not np.isfinite(w).all():
        raise UserError(f"{path} holds {int((~np.isfinite(w)).sum())} NaN or infinite gate values of {w.size}: the "
                        "search that wrote them diverged; derive from an earlier epoch's genotypes/ instead")
    return w


def derive_cells(gates: Sequence[np.ndarray], primitives: Sequence[str], method: str,
                 op_threshold: float | None) -> Genotype:
    """A genotype from the (normal, reduce) gate matrices (a threshold rule may leave a cell empty)."""
    normal, reduce = gates
    edges = [derive(w, primitives, method, op_threshold) for w in (normal, reduce)]
    return genotypes_with_edges(edges[0], edges[1], derived_form(method))


def cells_advice(genotype: Genotype, gates: Sequence[np.ndarray], primitives: Sequence[str], method: str,
                 op_threshold: float | None) -> str | None:
    """:func:`empty_cell_advice` for a derived cell genotype and its (normal, reduce) gates."""
    normal, reduce = gates
    return empty_cell_advice({"normal": (normal, genotype.normal), "reduce": (reduce, genotype.reduce)},
                             primitives, method, op_threshold)


def run_setting(folder: Path, key: str, default: Any) -> Any:
    """One option of the search run's ``config.yaml`` (``default`` when it is absent)."""
    path = folder / "config.yaml"
    try:
        data = load_yaml(read_text_limited(path, "config file")) if path.is_file() else None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {one_line(exc)}") from None
    value = data.get(key) if isinstance(data, dict) else None
    return default if value is None else value


def run_primitives(folder: Path, n_ops: int) -> tuple[str, ...]:
    """The op names of a cell search's gate columns (its config's, else the set of that size)."""
    primitives = resolve_primitives(run_setting(folder, "primitives", "fairdarts" if n_ops == 7 else "darts"))
    if len(primitives) != n_ops:
        raise UserError(f"{folder}: the gate weights have {n_ops} op columns but the run's primitives are {primitives}")
    return primitives


def _cell_gates(folder: Path) -> list[np.ndarray]:
    weights = []
    for name in (f"{c}_weight.npy" for c in CELLS):
        if not (folder / name).is_file():
            raise UserError(f"--parse_method needs {folder / name} (the search's final gate values)")
        weights.append(load_gate_weights(folder / name))
    return weights


def load_run_gates(folder: Path, space: str, groups: Sequence[str], n_ops: int) -> list[np.ndarray]:
    """A run folder's final gate values, one array per group of ``n_ops`` columns; one-line errors
    when absent or of another width."""
    gates = []
    for group in groups:
        path = folder / f"{group}_weight.npy"
        if not path.is_file():
            raise UserError(f"{path} not found; a {space} search run folder holds "
                            f"{', '.join(g + '_weight.npy' for g in groups)}")
        w = load_gate_weights(path)  # size-limited, finite real numbers
        if w.shape[1] != n_ops:
            raise UserError(f"{path} holds an array of shape {w.shape}; expected rows x {n_ops} ops")
        gates.append(w)
    return gates


def _check_method(method: str, methods: Sequence[str], space: str, folder: Path) -> None:
    if method not in methods:
        raise UserError(f"--parse_method {method} does not apply to the {space} search {folder}; "
                        f"use one of {', '.join(methods)}")


def genotype_from_run(folder: Path, parse_method: str | None = None,
                      op_threshold: float = 0.85) -> tuple[Genotype | MobileGenotype, str | None]:
    """(genotype, empty-cell advice or ``None``) of a search run folder.

    Without ``parse_method``: its ``genotype.json`` (see :func:`_saved_genotype`). With it:
    re-derived from the final gate weights (``mobile_weight.npy`` for an S2 run) with that rule
    and ``op_threshold``. ``train.py`` refuses a genotype that comes with advice.
    """
    if parse_method is None:
        return _saved_genotype(folder)
    if run_setting(folder, "search_space", "cell") in ("mobile", "s2"):
        skip = bool(run_setting(folder, "mobile_skip", False))
        _check_method(parse_method, MOBILE_METHODS, "mobile", folder)
        primitives = mobile_primitives(skip)
        (weights,) = load_run_gates(folder, "mobile", ("mobile",), len(primitives))
        return derive_mobile(weights, primitives, parse_method, op_threshold), None
    gates = _cell_gates(folder)
    primitives = run_primitives(folder, gates[0].shape[1])
    _check_method(parse_method, METHODS, "cell", folder)
    genotype = derive_cells(gates, primitives, parse_method, op_threshold)
    return genotype, cells_advice(genotype, gates, primitives, parse_method, op_threshold)


def _saved_genotype(folder: Path) -> tuple[Genotype | MobileGenotype, str | None]:
    """The run's ``genotype.json``; when its cell gate weights are there, checked for empty cells
    with the rule and threshold the run derived it with."""
    genotype = get_genotype(folder)
    if not all((folder / f"{c}_weight.npy").is_file() for c in CELLS):
        return genotype, None
    method = run_setting(folder, "parse_method", "threshold_sparse")
    threshold = run_setting(folder, "op_threshold", 0.85)
    if genotype.normal and genotype.reduce:
        return genotype, None
    gates = _cell_gates(folder)
    return genotype, cells_advice(genotype, gates, run_primitives(folder, gates[0].shape[1]), method, threshold)
