"""Genotypes: the discrete cells that a search derives and a retraining builds.

Two published forms exist and both must keep working unchanged:

* DARTS form: ``normal=[(op, from), ...]``, exactly two edges per intermediate node, in node
  order (node ``i`` is fed by entries ``2(i-2)`` and ``2(i-2)+1``); ``normal_concat`` names the
  nodes concatenated into the cell output. A third element that is a float (``(op, from, w)``)
  is the *reweight* form of the Fair DARTS ablations: the derived cell scales that op by ``w``.
* Fair DARTS form: ``normal=[(op, to, from), ...]``, any number of edges per node; a node
  with no incoming edge is isolated and dropped (and ``*_concat`` is ignored).

Genotypes are read from and written to JSON and the official
``Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)`` text, which is
parsed with :mod:`ast` (never ``eval``). JSON with ``"form": "mobile"`` is a genotype of search
space S2 (:mod:`fairdarts.search_space.mobile_genotype`); the registry and :func:`get_genotype`
hold and return both kinds.
"""
from __future__ import annotations

import ast
import difflib
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal

from fairdarts.errors import UserError
from fairdarts.invocation import command
from fairdarts.safe_io import read_text_limited, short_repr
from fairdarts.search_space.mobile_genotype import MobileGenotype, mobile_genotype_from_dict
from fairdarts.search_space.operations import OPS

Form = Literal["darts", "fairdarts", "darts-reweight"]
FORMS: tuple[str, ...] = ("darts", "fairdarts", "darts-reweight")
_WIDTH = {"darts": 2, "fairdarts": 3, "darts-reweight": 3}

#: Bounds of one cell, checked before anything is built: a search derives 4 intermediate nodes and
#: at most 14 inputs x 8 ops = 112 edges; a hand-written cell may be larger, but a cell of 20,000
#: edges would take minutes to build and is refused at once.
MAX_CELL_NODES = 16
MAX_CELL_EDGES = 256
BOUNDS = f"a cell may have at most {MAX_CELL_NODES} intermediate nodes and {MAX_CELL_EDGES} edges"


@dataclass(frozen=True)
class Edge:
    """One op of a cell: ``op`` applied to node ``src``, summed into node ``to``."""

    op: str
    to: int
    src: int
    weight: float | None = None


@dataclass(frozen=True)
class Genotype:
    """A normal and a reduction cell in one of the three published forms."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]
    form: Form = "darts"

    def cell(self, reduction: bool) -> tuple[tuple[Edge, ...], tuple[int, ...]]:
        return (self.reduce, self.reduce_concat) if reduction else (self.normal, self.normal_concat)

    # ----- conversions ---------------------------------------------------------------
    def edge_lists(self, reduction: bool) -> list[list[Any]]:
        """The cell's edges as the lists the published files use for this form."""
        return [_edge_to_list(e, self.form) for e in self.cell(reduction)[0]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "normal": self.edge_lists(False),
            "normal_concat": list(self.normal_concat),
            "reduce": self.edge_lists(True),
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_text(self) -> str:
        """The official ``Genotype(...)`` repr (tuples for edges, lists for concat)."""
        def edges(reduction: bool) -> str:
            return "[" + ", ".join(repr(tuple(e)) for e in self.edge_lists(reduction)) + "]"

        return (f"Genotype(normal={edges(False)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={edges(True)}, reduce_concat={list(self.reduce_concat)})")

    def live_nodes(self, reduction: bool) -> list[int]:
        """Intermediate nodes that exist, in the order the derived cell concatenates them."""
        edges, concat = self.cell(reduction)
        if self.form != "fairdarts":
            return list(concat)
        order: list[int] = []
        for e in edges:
            if e.to not in order:
                order.append(e.to)
        return order

    def count_op(self, op: str, reduction: bool = False) -> int:
        return sum(e.op == op for e in self.cell(reduction)[0])


def _edge_to_list(e: Edge, form: str) -> list[Any]:
    if form == "fairdarts":
        return [e.op, e.to, e.src]
    if form == "darts-reweight":
        return [e.op, e.src, e.weight]
    return [e.op, e.src]


# ----- construction and validation ----------------------------------------------------
def _infer_form(edges: list[Any]) -> str:
    if not all(isinstance(e, (list, tuple)) for e in edges):
        raise UserError("genotype edges must be lists like ['sep_conv_3x3', 0]")
    lengths = {len(e) for e in edges}
    if lengths == {2}:
        return "darts"
    if lengths == {3}:
        if all(isinstance(e[2], float) for e in edges):
            return "darts-reweight"
        if all(isinstance(e[2], int) and not isinstance(e[2], bool) for e in edges):
            return "fairdarts"
    raise UserError(
        "genotype edges must all be [op, from] (DARTS), [op, to, from] (Fair DARTS) or "
        "[op, from, weight] (reweight)"
    )


def _as_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise UserError(f"genotype {what} must be an integer node index, got {v!r}")
    return v


def _as_weight(v: Any, what: str) -> float:
    """A reweight-form op scale: a finite real number (a NaN scale would make every output NaN)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise UserError(f"genotype {what} weight must be a finite number, got {short_repr(v)}")
    return float(v)


def _build_edges(raw: Any, form: str, cell: str) -> tuple[Edge, ...]:
    if not isinstance(raw, (list, tuple)):
        raise UserError(f"genotype '{cell}' must be a list of edges")
    if not raw and form != "fairdarts":
        raise UserError(f"DARTS-form genotype '{cell}' must have two edges per node, got none")
    limit = MAX_CELL_EDGES if form == "fairdarts" else 2 * MAX_CELL_NODES
    if len(raw) > limit:
        raise UserError(f"genotype '{cell}' has {len(raw)} edges: {BOUNDS} ({2 * MAX_CELL_NODES} in the DARTS forms, "
                        "two per node)")
    edges = []
    for k, item in enumerate(raw):
        if not isinstance(item, (list, tuple)) or len(item) != _WIDTH[form]:
            raise UserError(f"genotype '{cell}' edge {k} must be a list of {_WIDTH[form]} like "
                            f"{_edge_to_list(Edge('sep_conv_3x3', 2, 0, 1.0), form)!r} ({form} form), "
                            f"got {short_repr(item)}")
        op = item[0]
        if not isinstance(op, str) or op not in OPS:
            close = difflib.get_close_matches(str(op), list(OPS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known ops: {', '.join(OPS)}"
            raise UserError(f"genotype '{cell}' edge {k} has unknown op {op!r}{hint}")
        if form == "fairdarts":
            to, src = _as_int(item[1], f"'{cell}' edge {k} 'to'"), _as_int(item[2], f"'{cell}' edge {k} 'from'")
            if not 2 <= to <= MAX_CELL_NODES + 1:
                raise UserError(f"genotype '{cell}' edge {k}: 'to' node {to} must be an intermediate node, "
                                f"2..{MAX_CELL_NODES + 1} ({BOUNDS})")
            edges.append(Edge(op, to, src))
        else:
            if len(raw) % 2:
                raise UserError(f"DARTS-form genotype '{cell}' needs two edges per node, got {len(raw)} edges")
            src = _as_int(item[1], f"'{cell}' edge {k} 'from'")
            weight = _as_weight(item[2], f"'{cell}' edge {k}") if form == "darts-reweight" else None
            edges.append(Edge(op, 2 + k // 2, src, weight))
    for k, e in enumerate(edges):
        if not 0 <= e.src < e.to:
            raise UserError(
                f"genotype '{cell}' edge {k} ({e.op}): node index {e.src} out of range; "
                f"node {e.to} can only take inputs 0..{e.to - 1}"
            )
    return tuple(edges)


def _concat_list(raw: Any, cell: str, allow_empty: bool = False) -> list[Any]:
    """A concat as a bounded list: it names nodes, at most every node of the cell (a Fair DARTS
    cell without edges has none)."""
    if isinstance(raw, range):
        raw = list(raw)
    if not isinstance(raw, (list, tuple)) or not (raw or allow_empty):
        raise UserError(f"genotype '{cell}_concat' must be a non-empty list of node indices")
    if len(raw) > MAX_CELL_NODES + 2:
        raise UserError(f"genotype '{cell}_concat' names {len(raw)} nodes: {BOUNDS}")
    return list(raw)


def _build_concat(raw: Any, edges: tuple[Edge, ...], cell: str) -> tuple[int, ...]:
    raw = _concat_list(raw, cell)
    nodes = {e.to for e in edges}
    concat = tuple(_as_int(v, f"'{cell}_concat' entry") for v in raw)
    bad = [v for v in concat if v not in nodes and v not in (0, 1)]
    if bad:
        raise UserError(f"genotype '{cell}_concat' names nodes {bad} that the cell does not have")
    return concat


def make_genotype(normal: Any, reduce: Any, normal_concat: Any = None, reduce_concat: Any = None,
                  form: str | None = None) -> Genotype:
    """Validate raw lists (from JSON, text or a search) and build a :class:`Genotype`."""
    if not isinstance(normal, (list, tuple)) or not isinstance(reduce, (list, tuple)):
        raise UserError("genotype needs 'normal' and 'reduce' edge lists")
    form = form or _infer_form(list(normal) + list(reduce))
    if form not in FORMS:
        raise UserError(f"unknown genotype form {form!r}; use one of {', '.join(FORMS)}")
    n_edges = _build_edges(normal, form, "normal")
    r_edges = _build_edges(reduce, form, "reduce")
    if form == "fairdarts":
        default = list(range(2, max((e.to for e in n_edges + r_edges), default=1) + 1))
        normal_concat = normal_concat if normal_concat is not None else default
        reduce_concat = reduce_concat if reduce_concat is not None else default
        nc, rc = (tuple(_as_int(v, "concat entry") for v in _concat_list(raw, cell, allow_empty=True))
                  for raw, cell in ((normal_concat, "normal"), (reduce_concat, "reduce")))
    else:
        if normal_concat is None or reduce_concat is None:
            raise UserError("DARTS-form genotype needs 'normal_concat' and 'reduce_concat'")
        nc = _build_concat(normal_concat, n_edges, "normal")
        rc = _build_concat(reduce_concat, r_edges, "reduce")
    return Genotype(n_edges, nc, r_edges, rc, form)  # type: ignore[arg-type]


def genotype_from_dict(d: Any) -> "Genotype | MobileGenotype":
    if not isinstance(d, dict):
        raise UserError("genotype JSON must be an object with 'normal', 'normal_concat', 'reduce', 'reduce_concat'")
    if d.get("form") == "mobile":
        return mobile_genotype_from_dict(d)
    missing = [k for k in ("normal", "reduce") if k not in d]
    if missing:
        raise UserError(f"genotype JSON is missing keys: {', '.join(missing)}")
    unknown = set(d) - {"normal", "normal_concat", "reduce", "reduce_concat", "form", "source", "name", "note"}
    if unknown:
        raise UserError(f"genotype JSON has unknown keys: {', '.join(sorted(unknown))}")
    return make_genotype(d["normal"], d["reduce"], d.get("normal_concat"), d.get("reduce_concat"), d.get("form"))


# ----- the official text form -----------------------------------------------------------
def _literal(node: ast.AST) -> Any:
    """A literal, allowing ``range(a, b)`` (the official repr of a concat)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [ast.literal_eval(a) for a in node.args]
        if not (1 <= len(args) <= 2 and all(isinstance(a, int) for a in args)) or node.keywords \
                or len(range(*args)) > 64:  # a concat lists a few nodes; range(10**12) would fill memory
            raise ValueError("bad range()")
        return list(range(*args))
    return ast.literal_eval(node)


def parse_genotype_text(text: str) -> Genotype:
    """Parse ``Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])``."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (RecursionError, MemoryError):
        raise UserError("cannot parse genotype text: it is nested too deeply") from None
    except SyntaxError as exc:
        raise UserError(f"cannot parse genotype text: {exc.msg} at column {exc.offset}") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise UserError("genotype text must look like "
                        "Genotype(normal=[...], normal_concat=[...], reduce=[...], reduce_concat=[...])")
    if call.args:
        raise UserError("genotype text must use keyword arguments: Genotype(normal=..., reduce=...)")
    fields: dict[str, Any] = {}
    for kw in call.keywords:
        try:
            fields[kw.arg or "**"] = _literal(kw.value)
        except (ValueError, TypeError, SyntaxError):
            raise UserError(f"genotype text: value of '{kw.arg}' must be a plain list of literals") from None
    return genotype_from_dict(fields)


# ----- the registry ---------------------------------------------------------------------
@lru_cache(maxsize=1)
def _registry() -> dict[str, "Genotype | MobileGenotype"]:
    text = resources.files("fairdarts.search_space").joinpath("genotypes.json").read_text()
    return {name: genotype_from_dict(entry) for name, entry in json.loads(text)["genotypes"].items()}


def registered_names() -> list[str]:
    return list(_registry())


def _from_path(path: Path) -> "Genotype | MobileGenotype":
    if path.is_dir():
        for candidate in (path / "genotype.json", path / "genotype_final.json"):
            if candidate.is_file():
                return _from_path(candidate)
        raise UserError(f"{path} is a folder without genotype.json; "
                        "pass a search run folder, a genotype JSON or a name")
    text = read_text_limited(path, "genotype file")
    if text.lstrip().startswith("Genotype"):
        return parse_genotype_text(text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is neither genotype JSON nor Genotype(...) text: "
                        f"{exc.msg} (line {exc.lineno})") from None
    except RecursionError:
        raise UserError(f"{path}: the genotype JSON is nested too deeply") from None
    if isinstance(data, dict) and "genotype" in data and isinstance(data["genotype"], dict):
        data = data["genotype"]
    return genotype_from_dict(data)


def get_genotype(spec: "str | Path | Genotype | MobileGenotype") -> "Genotype | MobileGenotype":
    """A registered name, a genotype JSON file, a search run folder or the official text."""
    if isinstance(spec, (Genotype, MobileGenotype)):
        return spec
    spec_str = str(spec).strip()
    registry = _registry()
    if spec_str in registry:
        return registry[spec_str]
    if spec_str.startswith("Genotype"):
        return parse_genotype_text(spec_str)
    if spec_str.startswith("{"):
        try:
            return genotype_from_dict(json.loads(spec_str))
        except json.JSONDecodeError as exc:
            raise UserError(f"genotype JSON is malformed: {exc.msg} (column {exc.colno})") from None
        except RecursionError:
            raise UserError("genotype JSON is nested too deeply") from None
    path = Path(spec_str)
    if path.exists():
        return _from_path(path)
    close = difflib.get_close_matches(spec_str, list(registry), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"run `{command('summary')} --all` to list them"
    raise UserError(f"unknown arch {spec_str!r}: not a registered genotype, a file or Genotype(...) text; {hint}")


def genotypes_with_edges(edges_normal: Iterable[list[Any]], edges_reduce: Iterable[list[Any]],
                         form: str, steps: int = 4) -> Genotype:
    """Build a genotype from derived edge lists (concat = all intermediate nodes)."""
    concat = list(range(2, 2 + steps))
    return make_genotype(list(edges_normal), list(edges_reduce), concat, concat, form)
