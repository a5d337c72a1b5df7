"""One function gives the genotype of a search run folder: its genotype.json, or re-derived
from its final gate weights; it reports empty cells with the advice the search gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fairdarts.errors import UserError
from fairdarts.search_space import FAIRDARTS_PRIMITIVES, derive, genotypes_with_edges, mobile_primitives
from fairdarts.search_space.run_genotype import genotype_from_run

RNG = np.random.default_rng(0)


def cell_run(folder: Path, normal: np.ndarray, reduce: np.ndarray, config: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "normal_weight.npy", normal.astype(np.float32))
    np.save(folder / "reduce_weight.npy", reduce.astype(np.float32))
    (folder / "config.yaml").write_text(config)
    return folder


def test_rederived_cells_follow_the_rule_and_threshold(tmp_path: Path) -> None:
    normal, reduce = RNG.uniform(0, 1, (14, 7)), RNG.uniform(0, 1, (14, 7))
    run = cell_run(tmp_path / "run", normal, reduce, "primitives: fairdarts\n")
    genotype, advice = genotype_from_run(run, "threshold_edge", 0.6)
    expected = [derive(w.astype(np.float32), FAIRDARTS_PRIMITIVES, "threshold_edge", 0.6) for w in (normal, reduce)]
    assert advice is None and genotype == genotypes_with_edges(*expected, "fairdarts") and genotype.normal
    with pytest.raises(UserError, match="does not apply to the cell search"):
        genotype_from_run(run, "argmax", 0.6)


def test_empty_cells_give_the_advice_and_the_saved_genotype_is_checked_too(tmp_path: Path) -> None:
    low = np.full((14, 7), 0.3)
    run = cell_run(tmp_path / "run", low, low, "parse_method: threshold_sparse\nop_threshold: 0.85\n")
    genotype, advice = genotype_from_run(run, "threshold_sparse", 0.85)
    assert not genotype.normal and "normal and reduce cells are empty" in advice and "--op_threshold 0.30" in advice
    (run / "genotype.json").write_text(genotype.to_json())
    saved, saved_advice = genotype_from_run(run)
    assert saved == genotype and saved_advice == advice
    darts, none = genotype_from_run(run, "darts", 0.85)
    assert none is None and len(darts.normal) == 8


def test_a_mobile_run_is_derived_from_its_mobile_gates(tmp_path: Path) -> None:
    run = tmp_path / "s2"
    run.mkdir()
    (run / "config.yaml").write_text("search_space: mobile\nmobile_skip: false\n")
    with pytest.raises(UserError, match="mobile_weight.npy not found"):
        genotype_from_run(run, "argmax", 0.85)
    np.save(run / "mobile_weight.npy", RNG.uniform(0, 1, (19, len(mobile_primitives(False)))).astype(np.float32))
    genotype, advice = genotype_from_run(run, "threshold", 0.0)
    assert advice is None and all(len(ops) == 6 for ops in genotype.layers)
    with pytest.raises(UserError, match="does not apply to the mobile search"):
        genotype_from_run(run, "darts", 0.85)


def test_missing_cell_gates_name_the_file(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match="--parse_method needs .*normal_weight.npy"):
        genotype_from_run(run, "darts", 0.85)
