"""The package's layers, enforced on the source: no module imports a layer above its own,
and the units of one layer do not import each other.

0. foundation: every top-level module not named below, and ``fairdarts.data`` (errors, files,
   checkpoints, metrics, configuration, devices);
1. ``fairdarts.search_space``: cells, networks, genotypes, derivation, the network spec and
   the genotype of a search run folder;
2. views of the models: ``fairdarts.flops``, ``fairdarts.visualize``;
3. the programs: ``fairdarts.search``, ``fairdarts.train``, ``fairdarts.evaluation``; siblings,
   none imports another (evaluation rebuilds networks from ``search_space`` and the checkpoint
   format alone; retraining reads a search run folder through ``search_space``);
4. the public facade ``fairdarts`` (its ``__init__``);
5. tools on the facade: ``fairdarts.summary``, ``fairdarts.ablations``, ``fairdarts.doctor``;
6. the installed console scripts, ``fairdarts.console``: one entry per command above.

A module may import its own unit at any depth, and anything of a lower layer. Lazy imports
inside functions count the same.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS: dict[str, int] = {
    "fairdarts.search_space": 1, "fairdarts.flops": 2, "fairdarts.visualize": 2,
    "fairdarts.search": 3, "fairdarts.train": 3, "fairdarts.evaluation": 3,
    "fairdarts": 4, "fairdarts.summary": 5, "fairdarts.ablations": 5, "fairdarts.doctor": 5,
    "fairdarts.console": 6,
}


def unit_of(module: str) -> tuple[str, int]:
    """(the layered unit a module belongs to, its layer): its longest prefix in LAYERS; the
    facade ``fairdarts`` only for the package itself; everything else is the foundation."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return prefix, LAYERS[prefix]
    return ("fairdarts", 4) if module == "fairdarts" else ("foundation", 0)


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    """(line, module) of every ``fairdarts`` import in ``source`` (relative ones resolved)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[:-node.level]
                base = ".".join(package + ([base] if base else []))
            found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == "fairdarts" or name.startswith("fairdarts.")]


def upward_imports(source: str, module: str) -> list[str]:
    """``line: module -> imported`` for each import of a layer at or above the module's own
    (other than its own unit)."""
    unit, layer = unit_of(module)
    bad = []
    for line, name in imported_modules(source, module):
        target, target_layer = unit_of(name)
        if target != unit and target_layer >= layer:
            bad.append(f"{line}: {module} -> {name}")
    return bad


def package_modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted((ROOT / "fairdarts").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules.append((".".join(parts), path))
    return modules


def test_no_module_imports_upward() -> None:
    bad = [b for module, path in package_modules() for b in upward_imports(path.read_text(), module)]
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


@pytest.mark.parametrize("module, source", [
    ("fairdarts.evaluation.evaluator", "from fairdarts.train.step import autocast"),
    ("fairdarts.train.trainer", "def f():\n    from fairdarts.search.spaces import CellSpace"),
    ("fairdarts.search_space.networks", "import fairdarts.search.artifacts"),
    ("fairdarts.checkpoint", "from fairdarts.search_space import Genotype"),
    ("fairdarts.search_space.supernet", "from fairdarts import build_network"),
    ("fairdarts.evaluation.evaluator", "from ..train import step"),
])
def test_upward_imports_are_found(module: str, source: str) -> None:
    assert upward_imports(source, module)


@pytest.mark.parametrize("module, source", [
    ("fairdarts.evaluation.cli", "from fairdarts.evaluation.evaluator import load_model"),
    ("fairdarts.train.trainer", "from fairdarts.search_space.run_genotype import genotype_from_run"),
    ("fairdarts.train.step", "from fairdarts.metrics import autocast"),
    ("fairdarts.summary", "from fairdarts import build_network"),
    ("fairdarts.search_space.derivation", "from .topology import node_rows"),
    ("fairdarts.search.spaces", "def f():\n    from fairdarts.visualize import render_genotype"),
])
def test_downward_and_own_imports_pass(module: str, source: str) -> None:
    assert upward_imports(source, module) == []
