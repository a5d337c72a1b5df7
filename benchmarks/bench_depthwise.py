"""Forward + backward of every dilated depthwise conv of the search space: nn.Conv2d against
our DepthwiseConv2d, at the supernet's shapes (C=16/32/64 at 32/16/8 px, batch 32).

    python benchmarks/bench_depthwise.py            # median of 30, interleaved
    python benchmarks/bench_depthwise.py --quick    # 5 repeats

For each (kernel, dilation, stride, channels, size): the time of ``y = conv(x)`` followed by
``autograd.grad(y, [x, weight])`` in channels-last (what the supernet runs on the CPU), the
plain and our path alternating call by call, and the largest relative difference of the
gradients. Prints a table and writes JSON (default ``benchmarks/results/depthwise.json``).
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
from torch import nn  # noqa: E402

from benchmarks.common import machine_meta, write_results  # noqa: E402
from fairdarts.search_space.depthwise import DepthwiseConv2d  # noqa: E402

# (kernel, dilation, stride, channels, size): dil_conv_3x3 / 5x5 in normal and reduction cells.
CASES = [(k, 2, s, c, h) for k in (3, 5) for (c, h) in ((16, 32), (32, 16), (64, 8)) for s in (1, 2)
         if not (s == 2 and h == 8)]


def measure(k: int, d: int, s: int, channels: int, size: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    conv = DepthwiseConv2d(channels, k, stride=s, padding=d * (k - 1) // 2, dilation=d)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()

    def run(forward) -> tuple[torch.Tensor, ...]:
        y = forward(conv, x)
        return torch.autograd.grad(y, [x, conv.weight], torch.ones_like(y))

    paths = {"plain": nn.Conv2d.forward, "ours": DepthwiseConv2d.forward}
    grads = {name: run(fwd) for name, fwd in paths.items()}
    err = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(grads["ours"], grads["plain"]))
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fwd in paths.items():
            t0 = time.perf_counter()
            run(fwd)
            times[name].append(time.perf_counter() - t0)
    plain, ours = (statistics.median(times[n]) * 1e3 for n in ("plain", "ours"))
    return {"kernel": k, "dilation": d, "stride": s, "channels": channels, "size": size, "batch": batch,
            "plain_ms": plain, "ours_ms": ours, "speedup": plain / ours, "max_rel_diff": err,
            "threads": torch.get_num_threads(), "repeats": repeats}


def table(rows: list[dict]) -> str:
    head = (f"{'k':>2} {'d':>2} {'s':>2} {'C':>4} {'px':>4} "
            f"{'plain ms':>9} {'ours ms':>8} {'speed-up':>9} {'rel diff':>9}")
    lines = [head, "-" * len(head)]
    lines += [f"{r['kernel']:>2} {r['dilation']:>2} {r['stride']:>2} {r['channels']:>4} {r['size']:>4} "
              f"{r['plain_ms']:>9.2f} {r['ours_ms']:>8.2f} {r['speedup']:>8.1f}x {r['max_rel_diff']:>9.1e}"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="5 repeats")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "depthwise.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats = 5 if args.quick else args.repeats
    rows = [measure(*case, batch=args.batch, repeats=repeats) for case in CASES]
    print(table(rows))
    out = write_results(args.out, machine_meta(torch.device("cpu")), rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
