"""Code shape: no function or method of the project's own code is longer than MAX_FUNCTION_LINES
(``end_lineno - lineno + 1``, decorators not counted), so each stays readable on one screen.
benchmarks/textbook.py is left out: it is a frozen reference copy of the original code."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_FUNCTION_LINES = 60
#: Folders searched recursively, and single scripts at the repository root.
SOURCE_DIRS = ("fairdarts", "darts", "scripts", "benchmarks")
ROOT_SCRIPTS = ("train.py", "train_search.py", "evaluate.py")
EXCLUDED = frozenset({"benchmarks/textbook.py"})


def source_files(repo: Path = REPO) -> list[Path]:
    """The checked .py files; a folder that does not exist (e.g. while it is being moved) adds none."""
    files = [p for d in SOURCE_DIRS if (repo / d).is_dir() for p in sorted((repo / d).rglob("*.py"))]
    files += [repo / name for name in ROOT_SCRIPTS if (repo / name).is_file()]
    return [p for p in files if p.relative_to(repo).as_posix() not in EXCLUDED]


def long_functions(source: str, filename: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``"file:line name (N lines)"`` for every function or method of ``source`` over ``limit`` lines."""
    functions = [node for node in ast.walk(ast.parse(source, filename))
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return [f"{filename}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in sorted(functions, key=lambda node: node.lineno)
            if node.end_lineno - node.lineno + 1 > limit]


def _function(name: str, body_lines: int, indent: str = "") -> str:
    """Source of a function ``name`` whose def line plus ``body_lines`` statements span 1 + body_lines lines."""
    body = "".join(f"{indent}    x{i} = {i}\n" for i in range(body_lines))
    return f"{indent}def {name}():\n{body}"


def test_long_functions_flags_only_what_is_over_the_limit() -> None:
    source = (_function("fits", MAX_FUNCTION_LINES - 1) + _function("too_long", MAX_FUNCTION_LINES)
              + "class C:\n" + _function("method_fits", MAX_FUNCTION_LINES - 1, "    ")
              + _function("long_method", MAX_FUNCTION_LINES, "    "))
    assert long_functions(source, "synthetic.py") == [
        f"synthetic.py:{MAX_FUNCTION_LINES + 1} too_long ({MAX_FUNCTION_LINES + 1} lines)",
        f"synthetic.py:{3 * MAX_FUNCTION_LINES + 3} long_method ({MAX_FUNCTION_LINES + 1} lines)",
    ]


def test_long_functions_counts_async_and_nested_functions() -> None:
    inner = _function("inner", MAX_FUNCTION_LINES, "    ")
    source = "async def outer():\n" + inner
    assert long_functions(source, "s.py") == [
        f"s.py:1 outer ({MAX_FUNCTION_LINES + 2} lines)",
        f"s.py:2 inner ({MAX_FUNCTION_LINES + 1} lines)",
    ]


def test_source_files_cover_the_package_and_skip_the_frozen_reference() -> None:
    names = {p.relative_to(REPO).as_posix() for p in source_files()}
    assert "fairdarts/runner.py" in names and "train.py" in names
    assert "benchmarks/bench_vs_textbook.py" in names
    assert "benchmarks/textbook.py" not in names


def test_no_function_is_longer_than_the_limit() -> None:
    offenders = []
    for path in source_files():
        rel = path.relative_to(REPO).as_posix()
        offenders += long_functions(path.read_text(encoding="utf-8"), rel)
    assert not offenders, (f"{len(offenders)} functions longer than {MAX_FUNCTION_LINES} lines; split them "
                           "into well-named helpers:\n" + "\n".join(offenders))
