"""Time one retraining step: FairDARTS_a, 36 channels, 20 cells, batch 32, train mode with the
auxiliary head (weight 0.4) and drop path 0.2, SGD + grad clip 5 (the published CIFAR step).

    python benchmarks/bench_retrain_step.py            # the published sizes
    python benchmarks/bench_retrain_step.py --quick    # C=8, 5 cells: seconds

Reports the median / min / max seconds per step over ``--steps`` (>= 10) timed steps after
``--warmup``, and images/s; on CUDA also with ``--amp`` bf16 and channels-last. Prints a
table and writes JSON (default ``benchmarks/results/retrain_step.json``).
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
from fairdarts.train.step import TrainStep  # noqa: E402



def measure(arch: str, channels: int, layers: int, batch: int, steps: int, warmup: int, dev: torch.device,
            amp: bool, channels_last: bool) -> dict:
    torch.manual_seed(0)
    net = fairdarts.build_network(arch, channels, layers, auxiliary=True).to(dev)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    net.drop_path_prob = 0.2
    opt = torch.optim.SGD(net.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    step = TrainStep(net, opt, auxiliary_weight=0.4, grad_clip=5.0, amp=amp, amp_dtype="bf16",
                     channels_last=channels_last)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (batch,), generator=g).to(dev)
    times = []
    for k in range(warmup + steps):
        sync(dev)
        t0 = time.perf_counter()
        step((x, y))
        sync(dev)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"arch": arch, "init_channels": channels, "layers": layers, "batch": batch, "device": str(dev),
            "amp": amp, "channels_last": channels_last, "threads": torch.get_num_threads(), "steps": steps,
            "warmup": warmup, "median_s": med, "min_s": min(times), "max_s": max(times), "images_per_s": batch / med}


def table(rows: list[dict]) -> str:
    head = (f"{'arch':<12} {'C':>3} {'L':>3} {'batch':>5} {'device':>7} {'amp':>4} {'cl':>3} "
            f"{'median s':>9} {'min s':>8} {'max s':>8} {'img/s':>8}")
    lines = [head, "-" * len(head)]
    lines += [f"{r['arch']:<12} {r['init_channels']:>3} {r['layers']:>3} {r['batch']:>5} {r['device']:>7} "
              f"{'y' if r['amp'] else 'n':>4} {'y' if r['channels_last'] else 'n':>3} {r['median_s']:>9.3f} "
              f"{r['min_s']:>8.3f} {r['max_s']:>8.3f} {r['images_per_s']:>8.1f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="C=8, 5 cells, 10 steps")
    p.add_argument("--arch", default="FairDARTS_a")
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps (at least 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrain_step.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.channels, args.layers = 8, 5
    dev = torch.device(args.device)
    variants = [(False, False), (False, True)] + ([(True, False), (True, True)] if dev.type == "cuda" else [])
    rows = []
    for amp, cl in variants:
        rows.append(measure(args.arch, args.channels, args.layers, args.batch, max(args.steps, 10), args.warmup,
                            dev, amp, cl))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    out = write_results(args.out, machine_meta(dev), rows)
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
