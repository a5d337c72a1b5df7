"""Peak memory of one S2 supernet forward + backward at 224 px on the CPU, per image.

    python benchmarks/bench_mobile_memory.py                  # batches 1 2 4, width 1, 1000 classes
    python benchmarks/bench_mobile_memory.py --batches 1 3 --width_mult 0.75

Each batch size runs in a fresh process (peak RSS only grows): build the supernet, one
training-mode forward and backward over weights and alphas (what a first-order search step
holds at its peak: the weight step and the architecture step run one after the other), report
``ru_maxrss``. The slope over batch sizes is the memory per image (activations saved for the
backward and their gradients), the intercept the fixed part (process, weights, gradients).
The derived FairNAS-A network is measured the same way for comparison. Results go to
``benchmarks/results/mobile_memory.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine_meta, write_results  # noqa: E402

MiB = 2 ** 20


def child(model: str, batch: int, width_mult: float, size: int) -> dict:
    """Peak RSS (MiB) of one forward + backward at ``batch`` images."""
    import fairdarts
    from fairdarts.search_space import MobileSupernet

    torch.manual_seed(0)
    net = (MobileSupernet(1000, width_mult=width_mult) if model == "supernet"
           else fairdarts.build_network("FairNAS_A", num_classes=1000, width_mult=width_mult))
    net.train()
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    out = net(x)
    logits = out[0] if isinstance(out, tuple) else out
    F.cross_entropy(logits, y).backward()
    return {"model": model, "batch": batch, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(model: str, batches: list[int], width_mult: float, size: int) -> dict:
    peaks = []
    for b in batches:
        out = subprocess.run([sys.executable, __file__, "--child", model, str(b), "--width_mult", str(width_mult),
                              "--image_size", str(size)], capture_output=True, text=True, check=True)
        peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"])
        print(f"{model} batch {b}: peak RSS {peaks[-1]:.0f} MiB", file=sys.stderr, flush=True)
    slope = (peaks[-1] - peaks[0]) / (batches[-1] - batches[0])
    return {"model": model, "width_mult": width_mult, "image_size": size, "batches": batches,
            "peak_rss_mib": peaks, "mib_per_image": round(slope, 1),
            "fixed_mib": round(peaks[0] - slope * batches[0], 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--width_mult", type=float, default=1.0)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "mobile_memory.json"))
    p.add_argument("--child", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.width_mult, args.image_size)))
        return
    torch.set_num_threads(1)
    rows = [measure(m, args.batches, args.width_mult, args.image_size) for m in ("supernet", "FairNAS_A")]
    write_results(args.out, {**machine_meta(torch.device("cpu")), "method": "peak RSS, fresh process per batch"}, rows)
    for r in rows:
        print(f"{r['model']}: {r['mib_per_image']} MiB per image, {r['fixed_mib']} MiB fixed")


if __name__ == "__main__":
    main()
