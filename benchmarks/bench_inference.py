"""Inference throughput (images/s) of a derived network in eval mode, as evaluate.py runs it.

    python benchmarks/bench_inference.py            # FairDARTS_a 36 ch, 20 cells; batch 1, 32, 128
    python benchmarks/bench_inference.py --quick    # C=8, 5 cells; batch 1, 32

Median seconds per forward pass over ``--repeats`` (>= 10) after ``--warmup``; on CUDA also
with ``--amp`` bf16 and channels-last. Prints a table and writes JSON
(default ``benchmarks/results/inference.json``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import machine_meta, sync, write_results  # noqa: E402

import fairdarts  # noqa: E402
from fairdarts.metrics import autocast  # noqa: E402



@torch.no_grad()
def measure(net: torch.nn.Module, batch: int, repeats: int, warmup: int, dev: torch.device, amp: bool,
            channels_last: bool) -> dict:
    x = torch.randn(batch, 3, 32, 32, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    times = []
    for k in range(warmup + repeats):
        sync(dev)
        t0 = time.perf_counter()
        with autocast(dev, amp, "bf16"):
            net(x)
        sync(dev)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"batch": batch, "device": str(dev), "amp": amp, "channels_last": channels_last,
            "threads": torch.get_num_threads(), "repeats": repeats, "median_s": med, "min_s": min(times),
            "images_per_s": batch / med}


def table(rows: list[dict]) -> str:
    head = f"{'batch':>5} {'device':>7} {'amp':>4} {'cl':>3} {'median ms':>10} {'min ms':>8} {'img/s':>9}"
    lines = [head, "-" * len(head)]
    lines += [f"{r['batch']:>5} {r['device']:>7} {'y' if r['amp'] else 'n':>4} {'y' if r['channels_last'] else 'n':>3} "
              f"{1e3 * r['median_s']:>10.2f} {1e3 * r['min_s']:>8.2f} {r['images_per_s']:>9.1f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="C=8, 5 cells, batches 1 and 32")
    p.add_argument("--arch", default="FairDARTS_a")
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--batches", default="1,32,128")
    p.add_argument("--repeats", type=int, default=10, help="timed passes (at least 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "inference.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.channels, args.layers, args.batches = 8, 5, "1,32"
    dev = torch.device(args.device)
    torch.manual_seed(0)
    net = fairdarts.build_network(args.arch, args.channels, args.layers, auxiliary=True).to(dev).eval()
    cost = fairdarts.count_flops_params(net, (1, 3, 32, 32))
    print(f"{args.arch} C={args.channels} L={args.layers}: {cost.flops / 1e6:.1f}M FLOPs, "
          f"{cost.params_no_aux / 1e6:.3f}M params without the auxiliary head")
    variants = [(False, False), (False, True)] + ([(True, False), (True, True)] if dev.type == "cuda" else [])
    rows = []
    for amp, cl in variants:
        model = net.to(memory_format=torch.channels_last) if cl else net
        for batch in (int(b) for b in args.batches.split(",")):
            rows.append({"arch": args.arch, "init_channels": args.channels, "layers": args.layers,
                         **measure(model, batch, max(args.repeats, 10), args.warmup, dev, amp, cl)})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    meta = {**machine_meta(dev), "flops": cost.flops, "params_no_aux": cost.params_no_aux}
    out = write_results(args.out, meta, rows)
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
