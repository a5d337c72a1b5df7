"""Cell pictures: ``python -m fairdarts.visualize --arch FairDARTS_a`` writes PNG and SVG.

Nodes: the two cell inputs c_{k-2} and c_{k-1} (drawn with subscripts, as Graphviz HTML-like
labels), the intermediate nodes and the output c_{k}; edges are labelled by op, spaced so that
the labels of two edges into one node do not touch. Isolated intermediate nodes of a Fair DARTS genotype
(no incoming edge) are drawn grey and dashed: the derived network drops them. Rendering
uses Graphviz's ``dot`` program (Debian package ``graphviz``); the DOT source is written
even when ``dot`` is missing.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from fairdarts.errors import CLIParser, UserError, run_cli
from fairdarts.help_groups import add_flag, help_sections
from fairdarts.invocation import command, prog
from fairdarts.safe_io import check_outputs, check_path_length, mark_output
from fairdarts.search_space.genotypes import Genotype, get_genotype
from fairdarts.search_space.mobile_genotype import MobileGenotype

DESCRIPTION = ("Cell pictures of a genotype: the normal and the reduction cell as DOT, PNG and SVG. Edges are "
               "labelled by op; intermediate nodes with no input (dropped by the derived network) are grey "
               "and dashed. PNG and SVG need Graphviz's dot program.")
INSTALL_HINT = "install Graphviz to render it: `apt-get install graphviz` (Debian/Ubuntu) or `conda install graphviz`"


def _quote(text: str) -> str:
    return '"' + text.replace('"', r'\"') + '"'


#: The cell's inputs and output: DOT node id -> subscript, drawn c<SUB>...</SUB>.
CELL_IO = {"c_k_2": "k-2", "c_k_1": "k-1", "c_k": "k"}


def cell_to_dot(genotype: Genotype, reduction: bool, title: str = "") -> str:
    """The DOT source of one cell. ``nodesep`` and ``ranksep`` leave room for the op labels:
    Graphviz stacks the labels of the edges into one node between its inputs, where the default
    spacing let two of them touch."""
    edges, _ = genotype.cell(reduction)
    live = genotype.live_nodes(reduction)
    steps = max([e.to for e in edges] + [5]) - 1
    lines = [
        "digraph cell {",
        "  rankdir=LR; nodesep=0.5; ranksep=0.9;",
        f"  label={_quote(title)}; labelloc=t; fontname=Helvetica;",
        "  node [style=filled, shape=rect, fontname=Helvetica, fontsize=18, height=0.5];",
        "  edge [fontname=Helvetica, fontsize=14];",
    ]
    for node, sub in CELL_IO.items():
        colour = "palegoldenrod" if node == "c_k" else "darkseagreen2"
        lines.append(f"  {node} [label=<c<SUB>{sub}</SUB>>, fillcolor={colour}];")
    node_name = {0: "c_k_2", 1: "c_k_1"}
    for node in range(2, steps + 2):
        node_name[node] = str(node - 2)
        if node in live:
            lines.append(f"  {_quote(node_name[node])} [shape=circle, fillcolor=lightblue];")
        else:
            lines.append(f"  {_quote(node_name[node])} [shape=circle, fillcolor=gray85, fontcolor=gray50, "
                         "style=\"filled,dashed\", color=gray60];")
    for e in edges:
        label = e.op if e.weight is None else f"{e.op} x{e.weight:g}"
        dead = e.src >= 2 and e.src not in live
        style = ", color=gray60, fontcolor=gray50, style=dashed" if dead else ""
        lines.append(f"  {_quote(node_name[e.src])} -> {_quote(node_name[e.to])} [label={_quote(label)}{style}];")
    for node in live:
        lines.append(f"  {_quote(node_name[node])} -> c_k [color=gray];")
    lines.append("}")
    return "\n".join(lines) + "\n"


#: Seconds one ``dot`` call may take (a cell draws in well under a second).
DOT_TIMEOUT_S = 120


def render_genotype(genotype: Genotype, out_dir: str | Path, name: str = "genotype") -> list[Path]:
    """Write ``<name>_normal`` and ``<name>_reduction`` as .dot, and .png/.svg when ``dot`` exists.

    Returns the written picture files (empty when Graphviz is absent).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dot = shutil.which("dot")
    written: list[Path] = []
    for reduction, kind in ((False, "normal"), (True, "reduction")):
        stem = out / f"{name}_{kind}"
        stem.with_suffix(".dot").write_text(cell_to_dot(genotype, reduction, f"{name}: {kind} cell"))
        if dot is None:
            continue
        for fmt in ("png", "svg"):
            target = stem.with_suffix(f".{fmt}")
            try:
                result = subprocess.run([dot, f"-T{fmt}", str(stem.with_suffix(".dot")), "-o", str(target)],
                                        capture_output=True, text=True, timeout=DOT_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:  # e.g. no process left to fork (EAGAIN)
                reason = exc.strerror if isinstance(exc, OSError) else f"no answer in {DOT_TIMEOUT_S} s"
                raise UserError(f"could not run graphviz's dot for {target} ({reason}); the .dot files are "
                                f"written: `dot -T{fmt} {stem.with_suffix('.dot')} -o {target}` renders one later")
            if result.returncode != 0:
                raise UserError(f"graphviz failed to render {target}: {result.stderr.strip()[:200]}")
            written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog=prog("visualize"), description=DESCRIPTION)
    sections = help_sections(p)
    add_flag(sections, "--arch", required=True,
             help="genotype name, JSON file, search run folder or Genotype(...) text (required)")
    add_flag(sections, "--out", default="cells", help="output folder (default: ./cells)")
    add_flag(sections, "--name", default=None, help="file name prefix (default: the arch name)")
    add_flag(sections, "--overwrite", action="store_true",
             help="replace existing picture files that this tool did not write")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    genotype = get_genotype(args.arch)
    if isinstance(genotype, MobileGenotype):
        raise UserError(f"{args.arch} is a mobile genotype (a chain of layers, no cells to draw); "
                        f"`{command('summary')} --arch` sizes it, "
                        "a search's plots/alpha_mobile.png shows its gates")
    name = args.name or (Path(args.arch).stem if Path(args.arch).exists() else str(args.arch))
    if not name.replace("_", "").replace("-", "").isalnum():
        name = "genotype"
    out = Path(args.out)
    check_path_length(out, "--out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the pictures")
    outputs = [("--out", out / f"{name}_{kind}.{ext}")
               for kind in ("normal", "reduction") for ext in ("dot", "png", "svg")]
    check_outputs(outputs, [("--arch", Path(args.arch) if Path(args.arch).exists() else None)], args.overwrite)
    try:
        written = render_genotype(genotype, out, name)
    except OSError as exc:
        raise UserError(f"cannot write the pictures into {out}: {exc.strerror or exc}") from None
    for path in [p for _, p in outputs if p.suffix == ".dot"] + written:
        mark_output(path, "fairdarts.visualize")
    if not written:
        print(f"wrote DOT files to {args.out}; {INSTALL_HINT}")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    run_cli(main)
