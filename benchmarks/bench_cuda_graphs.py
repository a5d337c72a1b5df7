"""The search step on a GPU, eager and replayed from a CUDA graph: time and peak memory per
step, per search variant and batch, and the equality of the two.

    python benchmarks/bench_cuda_graphs.py                 # GPU: C=16, 8 layers, 32 px, batch 64
    python benchmarks/bench_cuda_graphs.py --batches 32,64 --variants fairdarts_first_order,darts_first_order
    python benchmarks/bench_cuda_graphs.py --quick --device cpu   # the script itself, on the CPU

Per variant (default: Fair DARTS first order, DARTS second order; see ``VARIANTS``), two
supernets built from the same seed take the same batches, one eagerly and one through
:class:`fairdarts.search.graphed.GraphedSearchStep`, a step of each in turn. Reports the median
seconds per step of each (after the warm-up and the capture), the peak memory of each step
(``torch.cuda.max_memory_allocated``, the graph's private pool included), and how far the two
runs are apart after all steps: the largest absolute difference of the alphas, of the weights and of the
per-step losses (float32: the graph runs the same kernels, so differences come only from
nondeterministic GPU kernels). On the CPU the capture is the stand-in
:func:`fairdarts.search.graphed.run_eagerly` (the same step, no graph): it checks this script
and the plumbing, not the speed. Prints a table, writes JSON (default
``benchmarks/results/cuda_graphs.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
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
from fairdarts.search.config import SearchConfig  # noqa: E402
from fairdarts.search.graphed import WARMUP_STEPS, GraphedSearchStep, capture_cuda_graph, run_eagerly  # noqa: E402
from fairdarts.search.searcher import build_step, build_supernet  # noqa: E402

#: name -> preset file (the published searches) and the overrides that make the variant.
VARIANTS: dict[str, tuple[str, dict]] = {
    "fairdarts_first_order": ("configs/search_fairdarts_cifar10.yaml", {}),
    "darts_first_order": ("configs/search_darts_first_order.yaml", {}),
    "darts_second_order": ("configs/search_darts_second_order.yaml", {}),
    "darts_second_order_exact": ("configs/search_darts_second_order.yaml", {"hessian": "exact"}),
}
DEFAULT_VARIANTS = ("fairdarts_first_order", "darts_second_order")


def parse_variants(text: str) -> list[str]:
    """The comma list of ``--variants``, each one of :data:`VARIANTS` (else exit with the known ones)."""
    variants = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; use {', '.join(VARIANTS)}")
    return variants


def _build(cfg: SearchConfig, dev: torch.device):
    torch.manual_seed(0)
    return build_step(cfg, build_supernet(cfg, 10, 3, dev))


def measure(variant: str, batch: int, channels: int, layers: int, px: int, steps: int, dev: torch.device) -> dict:
    preset, overrides = VARIANTS[variant]
    cfg = dataclasses.replace(load_config_file(SearchConfig, REPO / preset), init_channels=channels, layers=layers,
                              batch_size=batch, cuda_graphs=dev.type == "cuda", **overrides)
    eager = _build(cfg, dev)
    plain = _build(cfg, dev)
    capture = capture_cuda_graph if dev.type == "cuda" else run_eagerly
    stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
    graphed = GraphedSearchStep(plain, logging.getLogger("bench"), stream, capture=capture)
    g = torch.Generator().manual_seed(1)
    batches = [tuple((torch.randn(batch, 3, px, px, generator=g).to(dev), torch.randint(0, 10, (batch,), generator=g)
                      .to(dev)) for _ in range(2)) for _ in range(4)]
    times: dict[str, list[float]] = {"eager": [], "graphed": []}
    peak = {"eager": 0, "graphed": 0}
    loss_diff = 0.0
    for k in range(steps):
        train, arch = batches[k % len(batches)]
        results = {}
        for name, step in (("eager", eager), ("graphed", graphed)):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            sync(dev)
            t0 = time.perf_counter()
            results[name] = step(train, arch)
            sync(dev)
            if k > WARMUP_STEPS:  # after the warm-up and the capture
                times[name].append(time.perf_counter() - t0)
            if dev.type == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated(dev))
        loss_diff = max(loss_diff, (results["eager"].loss - results["graphed"].loss).abs().item())
    alpha_diff = max((a - b).abs().max().item() for a, b in zip(eager.architect.alphas, plain.architect.alphas))
    weight_diff = max((a - b).abs().max().item() for a, b in zip(eager.weights, plain.weights))
    eager_s, graphed_s = statistics.median(times["eager"]), statistics.median(times["graphed"])
    return {"variant": variant, "batch": batch, "init_channels": channels, "layers": layers, "image_size": px,
            "device": str(dev), "capture": capture.__name__, "steps": steps, "timed_steps": len(times["eager"]),
            "eager_median_s": eager_s, "graphed_median_s": graphed_s, "speedup": eager_s / graphed_s,
            "eager_peak_mib": peak["eager"] / 2 ** 20 if dev.type == "cuda" else None,
            "graphed_peak_mib": peak["graphed"] / 2 ** 20 if dev.type == "cuda" else None,
            "captures": graphed.captures, "replays": graphed.replays, "max_abs_alpha_diff": alpha_diff,
            "max_abs_weight_diff": weight_diff, "max_abs_loss_diff": loss_diff}


def _mib(value: float | None) -> str:
    return f"{value:>9.0f}" if value is not None else f"{'n/a':>9}"


def table(rows: list[dict]) -> str:
    head = (f"{'variant':<24} {'batch':>5} {'eager s':>8} {'graphed s':>9} {'speed-up':>8} {'eager MiB':>9} "
            f"{'graph MiB':>9} {'|d alpha|':>10} {'|d w|':>10} {'|d loss|':>10}")
    lines = [head, "-" * len(head)]
    lines += [f"{r['variant']:<24} {r['batch']:>5} {r['eager_median_s']:>8.4f} {r['graphed_median_s']:>9.4f} "
              f"{r['speedup']:>7.2f}x {_mib(r['eager_peak_mib'])} {_mib(r['graphed_peak_mib'])} "
              f"{r['max_abs_alpha_diff']:>10.2e} {r['max_abs_weight_diff']:>10.2e} {r['max_abs_loss_diff']:>10.2e}"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: C=4, 3 layers, 8 px, batch 8, 8 steps")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--batches", default="64", help="comma list of batch sizes")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--px", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cuda_graphs.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.channels, args.layers, args.px, args.batches, args.steps = 4, 3, 8, "8", 8
    variants = parse_variants(args.variants)
    dev = torch.device(args.device)
    if dev.type == "cpu":
        print("CPU: the capture is the eager stand-in (no graph); this checks the script, not the speed")
    rows: list[dict] = []
    for variant in variants:
        for batch in (int(b) for b in args.batches.split(",")):
            rows.append(measure(variant, batch, args.channels, args.layers, args.px, args.steps, dev))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            out = write_results(args.out, machine_meta(dev), rows)
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
