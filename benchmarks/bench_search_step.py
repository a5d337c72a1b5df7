"""Time one search step (architecture step + weight step) of the supernet.

    python benchmarks/bench_search_step.py            # C=16, 8 layers, 32 px, batch 32 and 64
    python benchmarks/bench_search_step.py --quick    # tiny sizes, a few seconds

Each configuration runs in a fresh subprocess, so its peak memory is its own: peak RSS
(``resource.getrusage``) on CPU, ``torch.cuda.max_memory_allocated`` on CUDA. Reports the
median, min and max seconds per step over ``--steps`` timed steps after ``--warmup`` steps,
prints a table and writes JSON (default ``benchmarks/results/search_step.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
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
from fairdarts.search.searcher import build_step, build_supernet  # noqa: E402

#: name -> preset file (the published searches) and the overrides that make the variant.
VARIANTS: dict[str, tuple[str, dict]] = {
    "fairdarts_first_order": ("configs/search_fairdarts_cifar10.yaml", {}),
    "darts_first_order": ("configs/search_darts_first_order.yaml", {}),
    "darts_second_order": ("configs/search_darts_second_order.yaml", {}),
    "darts_second_order_exact": ("configs/search_darts_second_order.yaml", {"hessian": "exact"}),
}
DEFAULT_VARIANTS = ("fairdarts_first_order", "darts_second_order")


def measure(variant: str, batch: int, channels: int, layers: int, px: int, steps: int, warmup: int,
            device: str, threads: int | None) -> dict:
    """Run in the child: build the step, time it on fixed random batches."""
    if threads:
        torch.set_num_threads(threads)
    preset, overrides = VARIANTS[variant]
    cfg = dataclasses.replace(load_config_file(SearchConfig, REPO / preset), init_channels=channels,
                              layers=layers, batch_size=batch, **overrides)
    dev = torch.device(device)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # torch + imports, no model
    torch.manual_seed(0)
    model = build_supernet(cfg, 10, 3, dev)
    step = build_step(cfg, model)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, px, px, generator=g).to(dev), torch.randint(0, 10, (batch,), generator=g).to(dev))
               for _ in range(2)]
    times = []
    for k in range(warmup + steps):
        sync(dev)
        t0 = time.perf_counter()
        step(batches[0], batches[1])
        sync(dev)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(dev) if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"variant": variant, "batch": batch, "init_channels": channels, "layers": layers, "image_size": px,
            "device": str(dev), "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
            "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "peak_memory_mib": peak / 2 ** 20, "rss_after_imports_mib": baseline / 2 ** 20,
            "peak_memory_kind": "cuda_max_allocated" if dev.type == "cuda" else "cpu_peak_rss"}



def parse_variants(text: str) -> list[str]:
    """The comma list of ``--variants``, each one of :data:`VARIANTS` (else exit with the known ones)."""
    variants = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; use {', '.join(VARIANTS)}")
    return variants


def run_child(args: argparse.Namespace, variant: str, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--batch", str(batch), "--channels", str(args.channels),
           "--layers", str(args.layers), "--px", str(args.px), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed ({variant}, batch {batch}): {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = (f"{'variant':<26} {'batch':>5} {'median s':>9} {'min s':>8} {'max s':>8} {'peak MiB':>9} "
            f"{'imports MiB':>11}")
    lines = [head, "-" * len(head)]
    lines += [f"{r['variant']:<26} {r['batch']:>5} {r['median_s']:>9.3f} {r['min_s']:>8.3f} {r['max_s']:>8.3f} "
              f"{r['peak_memory_mib']:>9.0f} {r['rss_after_imports_mib']:>11.0f}" for r in rows]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: C=4, 3 layers, 8 px, batch 8, 10 steps")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--batches", default="32,64")
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--px", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps (at least 10 for a stable median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_step.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.channels, args.layers, args.px, args.batches = 4, 3, 8, "8"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.channels, args.layers, args.px, args.steps,
                                 args.warmup, args.device, args.threads)))
        return 0
    variants = parse_variants(args.variants)
    rows: list[dict] = []
    for variant in variants:
        for batch in (int(b) for b in args.batches.split(",")):
            rows.append(run_child(args, variant, batch))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
            out = write_results(args.out, machine_meta(torch.device(args.device)), rows)
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
