"""pyproject.toml declares what an install needs: every third-party import of fairdarts/ is a
runtime dependency (or an extra, for the optional ones), and the package data files exist;
requirements.txt (CI) agrees with it; the quick test tier leaves out the slow suites."""
from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
#: Import name -> distribution name, where they differ.
DISTRIBUTION = {"yaml": "pyyaml", "PIL": "pillow"}


def requirement_name(requirement: str) -> str:
    """``"torch==2.14.1"`` -> ``"torch"``, ``"fairdarts[onnx]"`` -> ``"fairdarts"``, lower case."""
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def requirement_names(requirements: list[str]) -> set[str]:
    """The distributions named, without ``fairdarts`` itself (an extra naming another extra)."""
    return {requirement_name(r) for r in requirements} - {"fairdarts"}


def third_party_imports(package: Path) -> dict[str, set[str]]:
    """Top-level modules imported anywhere under ``package`` that are neither stdlib nor the package,
    each with the files importing it."""
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != package.name:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return found


def test_every_third_party_import_is_a_runtime_dependency() -> None:
    """`pip install .` brings everything fairdarts/ imports, except onnxruntime: the export check
    imports it only when used, and it comes with the ``[onnx]`` extra."""
    imports = third_party_imports(REPO / "fairdarts")
    assert {"torch", "numpy", "yaml"} <= set(imports)  # the scan sees imports at all
    runtime = requirement_names(PYPROJECT["project"]["dependencies"])
    undeclared = {m: sorted(files) for m, files in imports.items() if DISTRIBUTION.get(m, m).lower() not in runtime}
    assert set(undeclared) == {"onnxruntime"}, f"imported by fairdarts/ but not a dependency: {undeclared}"
    assert "onnxruntime" in requirement_names(PYPROJECT["project"]["optional-dependencies"]["onnx"])


@pytest.mark.parametrize("package,files", PYPROJECT["tool"]["setuptools"]["package-data"].items())
def test_package_data_exists(package: str, files: list[str]) -> None:
    folder = REPO.joinpath(*package.split("."))
    assert (folder / "__init__.py").is_file()
    for name in files:
        assert (folder / name).is_file(), f"{package}: {name}"


def test_files_read_at_run_time_are_package_data() -> None:
    """The genotype registry and the published-checkpoint manifest are read through the package,
    so an installed copy (no repository beside it) finds them."""
    from fairdarts.evaluation.evaluator import MANIFEST

    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    listed = {REPO.joinpath(*package.split("."), name) for package, names in data.items() for name in names}
    assert MANIFEST in listed
    assert REPO / "fairdarts" / "search_space" / "genotypes.json" in listed


def test_console_scripts_point_at_main_functions() -> None:
    for script, target in PYPROJECT["project"]["scripts"].items():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), script


def test_ci_requirements_hold_every_declared_dependency_with_the_same_pins() -> None:
    """requirements.txt (CI's pinned set) installs all of pyproject's dependencies and extras,
    pinned as pyproject pins them, so CI tests what `pip install .` would bring."""
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    ci = {requirement_name(line): line for line in lines if line}
    project = PYPROJECT["project"]
    declared = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for requirement in declared:
        name = requirement_name(requirement)
        if name == "fairdarts":
            continue
        assert name in ci, f"{name} is in pyproject.toml but not in requirements.txt"
        if "==" in requirement:
            assert ci[name] == requirement, f"requirements.txt pins {ci[name]!r}, pyproject.toml {requirement!r}"


def test_quick_tier_leaves_out_faults_e2e_multiprocess_and_benchmarks() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not slow",
                           "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    quick = {line for line in proc.stdout.splitlines() if "::" in line}
    assert "tests/test_packaging.py::test_package_data_exists[fairdarts-files0]" in quick
    slow_files = ("tests/faults/", "tests/test_benchmarks.py", "tests/test_search_ddp.py", "tests/test_train_e2e.py",
                  "tests/test_search_e2e.py")
    slow_tests = ("test_two_process_ddp_equals_one_process", "test_two_gloo_processes_agree",
                  "test_fashion_mnist_s2_search_train_evaluate",
                  "test_walkthrough_runs_and_ends_in_the_stated_accuracy_range")
    assert not {t for t in quick if t.startswith(slow_files) or t.split("::")[1].split("[")[0] in slow_tests}


def test_native_kernel_sources_are_package_data() -> None:
    """An installed copy compiles its kernels from package data: every source the loader hashes
    and compiles is listed."""
    from fairdarts.search_space import native

    listed = PYPROJECT["tool"]["setuptools"]["package-data"]["fairdarts.search_space.native"]
    assert sorted(listed) == sorted(native.SOURCES)
