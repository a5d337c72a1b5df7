"""Time the passes a search step is made of, and what they imply for second / first order.

    python benchmarks/bench_search_passes.py            # DARTS supernet, C=16, 8 layers, 32 px, batch 32
    python benchmarks/bench_search_passes.py --quick    # a tiny net, seconds

A search step is built from three kinds of forward + backward pass over the supernet:

* ``A``: gradients of the alphas only, weights detached (the first-order architecture step,
  and each of the two finite-difference passes at w+ and w- of the second-order step);
* ``W``: gradients of the weights (the weight step, and the virtual step of second order);
* ``V``: gradients of the weights and the alphas (second order's validation pass at w').

So the first-order step costs ``A + W`` and the DARTS second-order step ``2W + V + 2A``; with
``V >= W = A + B`` their ratio is at least ``(5A + 3B) / (2A + B) >= 2.5`` whatever B is.
The script measures A, W, V and both steps (median of ``--repeats`` after a warm-up), prints
the predicted and the measured ratio, and writes JSON (default
``benchmarks/results/search_passes.json``).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call  # noqa: E402

from benchmarks.bench_vs_textbook import ALGORITHMS, FULL, QUICK, build_ours, synthetic_batches  # noqa: E402
from benchmarks.common import machine_meta, write_results  # noqa: E402


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(algorithm: str, quick: bool, batch: int, repeats: int) -> dict:
    size = QUICK if quick else FULL
    step = build_ours(ALGORITHMS[algorithm], size, 0, torch.device("cpu"))
    model, alphas = step.model, step.architect.alphas
    train, arch = synthetic_batches(size, batch, 0, torch.device("cpu"))
    step(train, arch)  # momentum buffers, for the second-order virtual step
    named = list(model.named_weight_parameters())
    weights = [p for _, p in named]
    detached = {n: p.detach() for n, p in named}
    virtual = {n: p.detach().clone().requires_grad_() for n, p in named}
    x, y = train

    def alpha_pass() -> None:
        torch.autograd.grad(F.cross_entropy(functional_call(model, detached, (x,)), y), alphas)

    def weight_pass() -> None:
        torch.autograd.grad(F.cross_entropy(model(x), y), weights, allow_unused=True)

    def both_pass() -> None:
        loss = F.cross_entropy(functional_call(model, virtual, (x,)), y)
        torch.autograd.grad(loss, alphas + list(virtual.values()), allow_unused=True)

    def steps(unrolled: bool) -> Callable[[], object]:
        def run() -> object:
            step.architect.unrolled = unrolled
            return step(train, arch)
        return run

    a, w, v = (_median_time(f, repeats) for f in (alpha_pass, weight_pass, both_pass))
    first, second = _median_time(steps(False), repeats), _median_time(steps(True), repeats)
    return {"algorithm": algorithm, "batch": batch, "net": "quick" if quick else "full", "repeats": repeats,
            "threads": torch.get_num_threads(), "A_s": a, "W_s": w, "V_s": v,
            "first_order_s": first, "second_order_s": second,
            "predicted_ratio": (2 * w + v + 2 * a) / (a + w), "measured_ratio": second / first,
            "floor_ratio": 2.5}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny net (C=4, 3 layers, 16 px), batch 8")
    p.add_argument("--algorithm", choices=list(ALGORITHMS), default="darts_2nd")
    p.add_argument("--batch", type=int, default=None, help="default 32 (quick: 8)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search_passes.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    r = measure(args.algorithm, args.quick, args.batch or (8 if args.quick else 32), args.repeats)
    print(f"{r['algorithm']}, batch {r['batch']}, median of {r['repeats']}:")
    print(f"  A (alpha gradients only)        {r['A_s']:8.2f} s")
    print(f"  W (weight gradients)            {r['W_s']:8.2f} s")
    print(f"  V (weight and alpha gradients)  {r['V_s']:8.2f} s")
    print(f"  first-order step (A + W)        {r['first_order_s']:8.2f} s")
    print(f"  second-order step (2W + V + 2A) {r['second_order_s']:8.2f} s")
    print(f"  second / first: predicted {r['predicted_ratio']:.2f}x, measured {r['measured_ratio']:.2f}x, "
          f"floor of any exact implementation {r['floor_ratio']:.1f}x")
    out = write_results(args.out, machine_meta(torch.device("cpu")), [r])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
