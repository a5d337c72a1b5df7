"""What the collapse instrument costs: seconds per eigenvalue as a share of one search epoch.

    python benchmarks/bench_hessian_eigen.py            # small and real sizes, one thread
    python benchmarks/bench_hessian_eigen.py --quick    # tiny size, seconds

Per size, on the DARTS supernet (softmax over 8 ops: 224 alphas, the largest matrix of the two
gates): the median search step (first order) and, for every ``--hessian_batches`` value, the
seconds of one measurement (:func:`fairdarts.search.hessian.architecture_eigenvalues` with the
default iterations and tolerance), its Lanczos iterations and, at the ``--reference-sizes``,
its eigenvalue next to a tight reference (tolerance 1e-6, up to 60 iterations) on the same
batches. The share is the measurement over ``steps_per_epoch`` steps: 196 for the small size
(the collapse study's epoch: 12544 Fashion-MNIST images, half for the weights, batch 32), 391
for the real one (CIFAR-10, 25000 images, batch 64). Prints a table, writes JSON (default
``benchmarks/results/hessian_eigen.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import machine_meta, sync, write_results  # noqa: E402

from fairdarts.config import load_config_file  # noqa: E402
from fairdarts.search.architect import ArchObjective  # noqa: E402
from fairdarts.search.config import SearchConfig  # noqa: E402
from fairdarts.search.hessian import architecture_eigenvalues  # noqa: E402
from fairdarts.search.searcher import build_step, build_supernet  # noqa: E402

#: name -> (channels, cells, pixels, batch, search steps per epoch)
SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "quick": (4, 3, 8, 8, 196),
    "small": (8, 5, 16, 32, 196),
    "real": (16, 8, 32, 64, 391),
}
REFERENCE = {"max_iters": 60, "tol": 1e-6}


def step_seconds(cfg: SearchConfig, model: torch.nn.Module, batches: list, steps: int, dev: torch.device) -> float:
    """Median seconds of a first-order search step (after one warm-up step)."""
    step = build_step(cfg, model)
    times = []
    for k in range(steps + 1):
        sync(dev)
        t0 = time.perf_counter()
        step(batches[0], batches[1])
        sync(dev)
        if k:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(size: str, hessian_batches: list[int], steps: int, dev: torch.device, reference: bool) -> list[dict]:
    """One row per ``--hessian_batches`` value at ``size``."""
    channels, cells, px, batch, per_epoch = SIZES[size]
    defaults = SearchConfig()
    cfg = dataclasses.replace(load_config_file(SearchConfig, REPO / "configs/search_darts_first_order.yaml"),
                              init_channels=channels, layers=cells, batch_size=batch)
    torch.manual_seed(0)
    model = build_supernet(cfg, 10, 3, dev)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(batch, 3, px, px, generator=g).to(dev), torch.randint(0, 10, (batch,), generator=g).to(dev))
            for _ in range(max(max(hessian_batches), 2))]
    step_s = step_seconds(cfg, model, data, steps, dev)
    objective = ArchObjective()
    rows = []
    for n in hessian_batches:
        def eig(max_iters: int, tol: float):
            return architecture_eigenvalues(model, data[:n], lambda *a: objective(*a)[0], cfg.arch_weight_decay,
                                            max_iters, tol)
        sync(dev)
        t0 = time.perf_counter()
        est = eig(defaults.hessian_iters, defaults.hessian_tol)
        sync(dev)
        seconds = time.perf_counter() - t0
        ref = eig(REFERENCE["max_iters"], REFERENCE["tol"]) if reference else None
        rows.append({"size": size, "init_channels": channels, "layers": cells, "image_size": px, "batch": batch,
                     "hessian_batches": n, "hessian_iters": defaults.hessian_iters, "hessian_tol": defaults.hessian_tol,
                     "eigen_s": seconds, "iterations": est.iterations, "converged": est.converged,
                     "eigenvalue": est.largest, "reference_eigenvalue": ref.largest if ref else None,
                     "reference_iterations": ref.iterations if ref else None,
                     "rel_error_vs_reference": abs(est.largest - ref.largest) / abs(ref.largest) if ref else None,
                     "step_s": step_s, "steps_per_epoch": per_epoch, "epoch_s": step_s * per_epoch,
                     "share_of_epoch": seconds / (step_s * per_epoch), "device": str(dev),
                     "threads": torch.get_num_threads()})
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'size':<6} {'batches':>7} {'eigen s':>8} {'iters':>5} {'rel err':>8} {'step s':>7} {'epoch s':>8} "
            f"{'share':>7}")
    lines = [head, "-" * len(head)]
    lines += [f"{r['size']:<6} {r['hessian_batches']:>7} {r['eigen_s']:>8.2f} {r['iterations']:>5} "
              f"{_sci(r['rel_error_vs_reference']):>8} {r['step_s']:>7.3f} {r['epoch_s']:>8.1f} "
              f"{r['share_of_epoch']:>7.1%}"
              for r in rows]
    return "\n".join(lines)


def _sci(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the tiny size only (C=4, 3 cells, 8 px, batch 8)")
    p.add_argument("--sizes", default="small,real", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--hessian-batches", default="1,2", help="comma list of --hessian_batches values")
    p.add_argument("--reference-sizes", default="quick,small",
                   help="sizes where each eigenvalue is compared with a tight reference (costs ~60 products)")
    p.add_argument("--steps", type=int, default=5, help="timed search steps (median)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1, as the collapse study)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--note", default="", help="a remark stored with the figures (e.g. the machine's load)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/hessian_eigen.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = ["quick"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown sizes {unknown}; use {', '.join(SIZES)}")
    dev = torch.device(args.device)
    counts = [int(n) for n in args.hessian_batches.split(",")]
    meta = {**machine_meta(dev), "note": args.note, "reference": REFERENCE}
    rows: list[dict] = []
    for size in sizes:
        rows += measure(size, counts, args.steps, dev, size in args.reference_sizes.split(","))
        write_results(args.out, meta, rows)
    print(table(rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
