"""The supernet's weight pass with the native CPU kernels, without them, and the textbook's.

    python benchmarks/bench_native_kernels.py                 # small and full size, median of 7
    python benchmarks/bench_native_kernels.py --size small --repeats 5

One process builds a Fair DARTS supernet and the textbook supernet with the same weights and
times, interleaved call by call, the forward and backward of the training loss (what every
search and weight step pays) in three variants: ``native`` (the default: conv chains and mixed
edges on :mod:`fairdarts.search_space.native`), ``pytorch`` (the same supernet with the kernels
switched off: PyTorch's channels-last layers, the implementation before them) and
``textbook``. Times are CPU time of this thread (``time.thread_time``), so the ratios hold on a
shared machine. Before timing, the three must give the same weight gradients (float64).
Prints a table and writes JSON (default ``benchmarks/results/native_kernels.json``).
"""
from __future__ import annotations

import argparse
import os
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

from benchmarks.common import machine_meta, write_results  # noqa: E402
from benchmarks.textbook import TextbookSupernet, textbook_state  # noqa: E402
from fairdarts.cpu_allocator import keep_freed_memory  # noqa: E402
from fairdarts.search_space import FAIRDARTS_PRIMITIVES, Supernet, native  # noqa: E402

SIZES = {"small": (8, 5, 16), "full": (16, 8, 32), "quick": (4, 3, 8)}  # C, layers, px
VARIANTS = ("native", "pytorch", "textbook")


def kernels(on: bool) -> None:
    """Switch the native kernels on or off for what runs next in this process."""
    os.environ[native.ENV_SWITCH] = "1" if on else "0"
    native.reset()


def build(size: str, batch: int, dtype: torch.dtype) -> tuple[dict[str, Callable[[], list[torch.Tensor]]], tuple]:
    C, layers, px = SIZES[size]
    torch.manual_seed(0)
    ours = Supernet(C, 10, layers, FAIRDARTS_PRIMITIVES, gate="sigmoid").to(dtype)
    tb = TextbookSupernet(C, 10, layers, FAIRDARTS_PRIMITIVES, gate="sigmoid").to(dtype)
    tb.load_state_dict(textbook_state(ours.state_dict()))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(batch, 3, px, px, generator=g, dtype=dtype), torch.randint(0, 10, (batch,), generator=g)
    weights = list(ours.weight_parameters())
    tb_weights = [dict(tb.named_parameters())[n] for n, _ in ours.named_weight_parameters()]

    def pass_of(model, params, on: bool | None) -> Callable[[], list[torch.Tensor]]:
        def run() -> list[torch.Tensor]:
            if on is not None:
                kernels(on)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward(inputs=params)
            return [p.grad for p in params]
        return run

    runs = {"native": pass_of(ours, weights, True), "pytorch": pass_of(ours, weights, False),
            "textbook": pass_of(tb, tb_weights, None)}
    return runs, (C, layers, px)


def max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    fa, fb = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return ((fa - fb).abs().max() / fb.abs().max()).item()


def measure(size: str, batch: int, repeats: int) -> dict:
    check, _ = build(size if size == "quick" else "quick", 4, torch.float64)
    ref = check["textbook"]()
    equality = {v: max_rel_diff(check[v](), ref) for v in ("native", "pytorch")}
    runs, (C, layers, px) = build(size, batch, torch.float32)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(repeats + 1):
        order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
        for v in order:
            t0 = time.thread_time()
            runs[v]()
            if i > 0:  # the first round warms up
                times[v].append(time.thread_time() - t0)
    kernels(True)
    med = {v: statistics.median(times[v]) for v in VARIANTS}
    return {"size": size, "C": C, "layers": layers, "image_size": px, "batch": batch, "repeats": repeats,
            **{f"{v}_cpu_s": med[v] for v in VARIANTS},
            "native_vs_textbook": med["textbook"] / med["native"],
            "pytorch_vs_textbook": med["textbook"] / med["pytorch"],
            "native_vs_pytorch": med["pytorch"] / med["native"],
            "float64_rel_diff_vs_textbook": equality, "kernels": native.status()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=list(SIZES), nargs="+", default=["small", "full"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "native_kernels.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    meta = {**machine_meta(torch.device("cpu")), "threads": args.threads}
    rows = []
    print(f"{'size':<7}{'native s':>10}{'pytorch s':>11}{'textbook s':>12}{'native x':>10}{'pytorch x':>11}"
          f"{'native/pytorch':>16}")
    for size in args.size:
        r = measure(size, args.batch, args.repeats)
        rows.append(r)
        print(f"{size:<7}{r['native_cpu_s']:>10.3f}{r['pytorch_cpu_s']:>11.3f}{r['textbook_cpu_s']:>12.3f}"
              f"{r['native_vs_textbook']:>9.2f}x{r['pytorch_vs_textbook']:>10.2f}x{r['native_vs_pytorch']:>15.2f}x",
              flush=True)
        write_results(args.out, meta, rows)
    print(f"float64 weight gradients vs textbook: {rows[0]['float64_rel_diff_vs_textbook']}; kernels {native.status()}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
