"""Re-derive a genotype from a finished (or running) search without searching again.

    python -m fairdarts.search.derive_cli RUN_DIR --parse_method threshold_edge --op_threshold 0.6
    fairdarts-derive path/to/normal_weight.npy --primitives fairdarts --out g.json
    python -m fairdarts.search.derive_cli S2_RUN_DIR --parse_method argmax

Reads the final gate values (``normal_weight.npy`` / ``reduce_weight.npy``, or
``mobile_weight.npy`` of a search in space S2); the run's ``config.yaml`` supplies the search
space, the primitives and the default method and threshold. Prints the official
``Genotype(...)`` text (a one-line layer list for S2); ``--out`` also writes the JSON that
``get_genotype`` reads. A threshold rule that leaves a cell empty (no gate reached the
threshold) is warned about on stderr, with the gate range found and the two remedies.
``--out`` follows the output rule of :func:`fairdarts.safe_io.check_outputs`: never one of its
inputs nor inside the run folder it reads, an existing file only with ``--overwrite`` (or when
this tool wrote it). Gate values that are NaN or infinite (a diverged search) are refused.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from fairdarts.config import load_config_file
from fairdarts.errors import CLIParser, UserError, finite_float, run_cli
from fairdarts.help_groups import add_flag, grouped_choices, help_sections
from fairdarts.invocation import prog
from fairdarts.run_dir import atomic_write_text
from fairdarts.safe_io import check_outputs, mark_output
from fairdarts.search.config import SearchConfig
from fairdarts.search.spaces import CellSpace, MobileSpace, load_gates, space_of
from fairdarts.search_space import METHODS, MOBILE_METHODS, PRIMITIVE_SETS, mobile_primitives, resolve_primitives
from fairdarts.search_space.run_genotype import cells_advice, load_gate_weights


def build_parser() -> CLIParser:
    p = CLIParser(prog=prog("derive"), description=__doc__.split("\n\n")[0])
    sections = help_sections(p)
    p.add_argument("source", help="search run folder, or a normal_weight.npy or mobile_weight.npy file")
    add_flag(sections, "--reduce", default=None, help="reduce_weight.npy (default: beside the normal file)")
    add_flag(sections, "--parse_method", default=None,
             help="derivation rule (default: the run's, else threshold_sparse for a cell search, threshold for a "
                  f"mobile one); {grouped_choices({'cell': METHODS, 'mobile': MOBILE_METHODS})}")
    add_flag(sections, "--op_threshold", type=finite_float, default=None,
             help="gate threshold of the threshold rules (default: the run's, else 0.85)")
    add_flag(sections, "--primitives", default=None,
             help="op names of a cell search's columns: fairdarts, darts or a comma list (default: the run's config)")
    add_flag(sections, "--out", metavar="FILE", default=None,
             help="also write the genotype JSON here (default: none)")
    add_flag(sections, "--overwrite", action="store_true",
             help="replace an existing --out file that this tool did not write")
    return p


def _inputs(source: Path, *files: Path) -> list[tuple[str, Path]]:
    """What this command reads: the gate files and, when they lie in a run folder (its
    ``config.yaml`` is read too), that whole folder."""
    folder = source if source.is_dir() else source.parent
    found = [("source", f) for f in files]
    return found + ([("search run", folder)] if (folder / "config.yaml").is_file() else [])


def _write(out: Path, text: str) -> None:
    atomic_write_text(out, text + "\n")
    mark_output(out, "fairdarts-derive")


def _run_config(folder: Path) -> SearchConfig | None:
    path = folder / "config.yaml"
    return load_config_file(SearchConfig, path, ignore_unknown=True) if path.is_file() else None


def _default_primitives(n_ops: int) -> tuple[str, ...]:
    for names in PRIMITIVE_SETS.values():
        if len(names) == n_ops:
            return names
    raise UserError(f"the weights have {n_ops} op columns; say which ops with --primitives a,b,c")


def _mobile(source: Path, cfg: SearchConfig | None) -> list[np.ndarray] | None:
    """The mobile gate matrix when ``source`` is an S2 run or its ``mobile_weight.npy``, else None."""
    if source.is_dir():
        return load_gates(source, space_of(cfg)) if cfg is not None and space_of(cfg).name == "mobile" else None
    if source.name != "mobile_weight.npy":
        return None
    w = load_gate_weights(source)
    if w.shape[1] not in (len(mobile_primitives(False)), len(mobile_primitives(True))):
        raise UserError(f"{source} has {w.shape[1]} op columns; a mobile search has 6 (or 7 with skip)")
    return [w]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.parse_method is not None and args.parse_method not in METHODS + MOBILE_METHODS:
        raise UserError(f"--parse_method {args.parse_method!r} is not a derivation rule; use one of "
                        f"{', '.join(METHODS)} (cell searches) or {', '.join(MOBILE_METHODS)} (mobile searches)")
    source = Path(args.source)
    cfg = _run_config(source if source.is_dir() else source.parent)
    threshold = args.op_threshold if args.op_threshold is not None else (cfg.op_threshold if cfg else 0.85)
    mobile = _mobile(source, cfg)
    if mobile is not None:
        space = MobileSpace(skip=mobile[0].shape[1] == len(mobile_primitives(True)))
        method = args.parse_method or (cfg.method if cfg else space.default_method)
        if method not in space.methods:
            raise UserError(f"--parse_method {method} does not apply to a mobile search; use argmax or threshold")
        if args.out:
            files = [source / "mobile_weight.npy"] if source.is_dir() else [source]
            check_outputs([("--out", args.out)], _inputs(source, *files), args.overwrite)
        genotype = space.derive(mobile, method, threshold)
        print(genotype.to_text())
        if args.out:
            _write(Path(args.out), genotype.to_json())
        return 0
    normal_path = source / "normal_weight.npy" if source.is_dir() else source
    reduce_path = Path(args.reduce) if args.reduce else normal_path.parent / "reduce_weight.npy"
    normal, reduce = load_gate_weights(normal_path), load_gate_weights(reduce_path)
    if normal.shape != reduce.shape:
        raise UserError(f"normal weights {normal.shape} and reduce weights {reduce.shape} differ in shape")
    if args.out:
        check_outputs([("--out", args.out)], _inputs(source, normal_path, reduce_path), args.overwrite)

    if args.primitives:
        primitives = resolve_primitives(args.primitives)
    elif cfg is not None:
        primitives = resolve_primitives(cfg.primitives)
    else:
        primitives = _default_primitives(normal.shape[1])
    method = args.parse_method or (cfg.method if cfg else "threshold_sparse")
    if method not in METHODS:
        raise UserError(f"--parse_method {method} does not apply to a cell search; use one of {', '.join(METHODS)}")
    genotype = CellSpace(primitives).derive([normal, reduce], method, threshold)
    print(genotype.to_text())
    if args.out:
        _write(Path(args.out), genotype.to_json())
    advice = cells_advice(genotype, [normal, reduce], primitives, method, threshold)
    if advice:  # after --out, so that a failed write stays the one line on stderr
        print(f"warning: {advice}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run_cli(main)
