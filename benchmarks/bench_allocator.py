"""The search's weight pass with glibc's default malloc settings and with freed memory kept.

    python benchmarks/bench_allocator.py            # C=16, 8 layers, 32 px, batch 32
    python benchmarks/bench_allocator.py --quick    # a tiny net, seconds

:func:`fairdarts.cpu_allocator.keep_freed_memory` is a per-process setting, so each variant
runs in its own interpreter (``FAIRDARTS_KEEP_FREED_MEMORY=0`` / ``1``), the two alternating
for ``--rounds`` rounds of ``--passes`` weight passes (forward and backward of the training
loss) each after one warm-up pass. Reported per variant: the median over all passes of the
wall time, of the CPU time of the calling thread (robust to other jobs on the machine) and
of the minor page faults. Writes ``benchmarks/results/allocator.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import machine_meta, write_results  # noqa: E402

VARIANTS = {"glibc default": "0", "freed memory kept": "1"}


def _child(size: tuple[int, int, int], batch: int, passes: int) -> None:
    """Runs in the subprocess: prints one JSON list of (wall, cpu, faults) per pass."""
    import resource
    import time

    import torch.nn.functional as F

    from fairdarts.cpu_allocator import keep_freed_memory
    from fairdarts.search_space import FAIRDARTS_PRIMITIVES, Supernet

    keep_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    C, layers, px = size
    model = Supernet(C, 10, layers, FAIRDARTS_PRIMITIVES, gate="sigmoid")
    x, y = torch.randn(batch, 3, px, px), torch.randint(0, 10, (batch,))
    rows = []
    for i in range(passes + 1):
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall, cpu = time.perf_counter(), time.thread_time()
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        row = (time.perf_counter() - wall, time.thread_time() - cpu,
               resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
        if i:
            rows.append(row)
    print(json.dumps(rows))


def run_variant(env_value: str, size: tuple[int, int, int], batch: int, passes: int) -> list[list[float]]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps([size, batch, passes])]
    env = {**os.environ, "FAIRDARTS_KEEP_FREED_MEMORY": env_value, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny net (C=4, 3 layers, 16 px), batch 8")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two variants")
    p.add_argument("--passes", type=int, default=3, help="timed weight passes per round and variant")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "allocator.json"),
                   help="JSON file for the results")
    args = p.parse_args(argv)
    size, batch = ((4, 3, 16), 8) if args.quick else ((16, 8, 32), 32)
    samples: dict[str, list[list[float]]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name in (list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]):
            samples[name] += run_variant(VARIANTS[name], size, batch, args.passes)
    rows = []
    for name, s in samples.items():
        rows.append({"variant": name, "net": {"C": size[0], "layers": size[1], "image_size": size[2]},
                     "batch": batch, "passes": len(s), "wall_s": statistics.median(r[0] for r in s),
                     "cpu_s": statistics.median(r[1] for r in s),
                     "minor_faults": statistics.median(r[2] for r in s)})
    base = rows[0]["cpu_s"]
    print(f"weight pass, C={size[0]}, {size[1]} layers, {size[2]} px, batch {batch}, medians of {len(s)} passes:")
    print(f"{'variant':<20}{'wall s':>9}{'cpu s':>9}{'page faults':>13}{'cpu speed-up':>14}")
    for row in rows:
        row["cpu_speedup"] = base / row["cpu_s"]
        print(f"{row['variant']:<20}{row['wall_s']:>9.3f}{row['cpu_s']:>9.3f}{row['minor_faults']:>13.0f}"
              f"{row['cpu_speedup']:>13.2f}x")
    print(f"wrote {write_results(args.out, machine_meta(torch.device('cpu')), rows)}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--_child":
        size, batch, passes = json.loads(sys.argv[2])
        _child(tuple(size), batch, passes)
    else:
        sys.exit(main())
