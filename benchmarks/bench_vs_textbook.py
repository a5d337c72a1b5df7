"""Our search step against the textbook DARTS step: time, peak memory, data wait, equality.

    python benchmarks/bench_vs_textbook.py                # C=16, 8 layers, 32 px, batch 32 and 64
    python benchmarks/bench_vs_textbook.py --size small   # C=8, 5 layers, 16 px (CPU smoke runs, tests)
    python benchmarks/bench_vs_textbook.py --quick        # a tiny net, a few seconds

For each algorithm (Fair DARTS first order, DARTS second order) and batch size, both
implementations run in this process on the same batches, alternating which goes first, and a
search step (architecture step + weight step) is timed ``--repeats`` times after
``--warmup`` steps, and so is the weight pass alone (forward and backward of the training
loss, what every step and every retraining step pays). Each time is taken twice: wall clock
and the CPU time of the calling thread (``time.thread_time``); on a shared machine the CPU
time still counts only this process's own work, so its ratios hold under load. Peak memory: on
CUDA ``torch.cuda.max_memory_allocated``; on the CPU the peak RSS of a fresh subprocess per
(implementation, algorithm, batch) that builds the model
and runs ``--memory-steps`` steps (``resource.getrusage(RUSAGE_SELF).ru_maxrss``). The batches
come from :class:`fairdarts.data.InMemoryLoader` / ``InfiniteBatches`` over CIFAR-sized
synthetic images; the time spent in ``next()`` is reported as a share of our step.

Before timing, both implementations get the same weights (our ``state_dict`` mapped onto the
textbook net) and must give the same logits, training loss, weight gradients and architecture
(hyper)gradients, so a speed-up cannot come from computing something else. The table is
printed and everything is written to ``benchmarks/results/vs_textbook.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.textbook import TextbookSearch, TextbookSupernet, textbook_state  # noqa: E402
from fairdarts.cpu_allocator import keep_freed_memory  # noqa: E402
from fairdarts.search.architect import ArchObjective, Architect  # noqa: E402
from fairdarts.search.loop import SearchStep, weight_optimizer  # noqa: E402
from fairdarts.search_space import DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES, Supernet  # noqa: E402

Batch = tuple[Tensor, Tensor]
IMPLEMENTATIONS = ("ours", "textbook")


@dataclass(frozen=True)
class Algorithm:
    """Gate, candidate ops, order and the official hyperparameters of one search algorithm."""

    gate: str
    primitives: tuple[str, ...]
    unrolled: bool
    lr: float
    arch_lr: float
    arch_betas: tuple[float, float]
    zero_one_weight: float
    momentum: float = 0.9
    weight_decay: float = 3e-4
    arch_weight_decay: float = 1e-3
    grad_clip: float = 5.0


ALGORITHMS: dict[str, Algorithm] = {
    "fairdarts_1st": Algorithm("sigmoid", FAIRDARTS_PRIMITIVES, False, 0.005, 3e-3, (0.9, 0.999), 10.0),
    "darts_2nd": Algorithm("softmax", DARTS_PRIMITIVES, True, 0.025, 3e-4, (0.5, 0.999), 0.0),
}


@dataclass(frozen=True)
class NetSize:
    C: int
    layers: int
    image_size: int
    num_classes: int = 10


FULL = NetSize(16, 8, 32)
SMALL = NetSize(8, 5, 16)
QUICK = NetSize(4, 3, 16)
SIZES = {"full": FULL, "small": SMALL, "quick": QUICK}


# ----- building both implementations from the same weights -----------------------------------
def build_ours(algo: Algorithm, size: NetSize, seed: int, device: torch.device,
               dtype: torch.dtype = torch.float32) -> SearchStep:
    torch.manual_seed(seed)
    model = Supernet(size.C, size.num_classes, size.layers, algo.primitives, gate=algo.gate)
    model = model.to(device=device, dtype=dtype)
    w_optimizer = weight_optimizer(model.weight_parameters(), algo.lr, algo.momentum, algo.weight_decay)
    architect = Architect(model, algo.arch_lr, algo.arch_betas, algo.arch_weight_decay,
                          ArchObjective(algo.zero_one_weight), unrolled=algo.unrolled)
    return SearchStep(model, architect, w_optimizer, algo.grad_clip)


def build_textbook(algo: Algorithm, size: NetSize, state: dict[str, Tensor], device: torch.device,
                   dtype: torch.dtype = torch.float32) -> TextbookSearch:
    model = TextbookSupernet(size.C, size.num_classes, size.layers, algo.primitives, gate=algo.gate)
    model = model.to(device=device, dtype=dtype)
    model.load_state_dict(textbook_state(state))
    return TextbookSearch(model, algo.lr, algo.momentum, algo.weight_decay, algo.arch_lr, algo.arch_betas,
                          algo.arch_weight_decay, algo.zero_one_weight, algo.grad_clip)


def run_step(impl: str, step: SearchStep | TextbookSearch, train: Batch, arch: Batch, unrolled: bool) -> None:
    if impl == "ours":
        step(train, arch)  # type: ignore[operator]
    else:
        step.step(*train, *arch, unrolled=unrolled)  # type: ignore[union-attr]


def run_weight_pass(impl: str, step: SearchStep | TextbookSearch, train: Batch) -> None:
    """Forward and backward of the training loss into the weight gradients (no optimizer step)."""
    x, y = train
    model = step.model
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    if impl == "ours":
        loss.backward(inputs=step.weights)  # type: ignore[union-attr]
    else:
        loss.backward()  # the textbook's weight step: every gradient, alphas included


# ----- equality ---------------------------------------------------------------------------
def _rel_err(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """max |a - b| / max |b| over a list of tensors (0 when both are all zeros)."""
    fa = torch.cat([t.detach().flatten().double() for t in a])
    fb = torch.cat([t.detach().flatten().double() for t in b])
    scale = fb.abs().max().item()
    return (fa - fb).abs().max().item() / scale if scale > 0 else (fa - fb).abs().max().item()


def compare_implementations(algo: Algorithm, size: NetSize, batch_size: int, seed: int = 0,
                            dtype: torch.dtype = torch.float32,
                            device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Relative errors between our step's quantities and the textbook's on the same weights.

    One real search step first, so the momentum buffers that the second-order virtual step
    reads exist; our weights, buffers and momentum buffers are then copied into the textbook.
    """
    train, arch = synthetic_batches(size, batch_size, seed, device, dtype)
    ours = build_ours(algo, size, seed, device, dtype)
    ours(train, arch)
    model = ours.model
    tb = build_textbook(algo, size, model.state_dict(), device, dtype)
    by_name = dict(tb.model.named_parameters())
    for name, p in model.named_weight_parameters():
        buf = ours.w_optimizer.state[p].get("momentum_buffer")
        if buf is not None:
            tb.w_optimizer.state[by_name[name]]["momentum_buffer"] = buf.clone()

    x, y = train
    logits_o, logits_t = model(x), tb.model(x)
    loss_o, loss_t = F.cross_entropy(logits_o, y), F.cross_entropy(logits_t, y)
    names = [n for n, _ in model.named_weight_parameters()]
    gw_o = torch.autograd.grad(loss_o, [p for _, p in model.named_weight_parameters()])
    gw_t = torch.autograd.grad(loss_t, [by_name[n] for n in names])

    if algo.unrolled:
        ga_o, stats = ours.architect.second_order_grads(train, arch, ours.w_optimizer)
    else:
        ga_o, stats = ours.architect.first_order_grads(arch)
    tb.arch_backward(*train, *arch, unrolled=algo.unrolled)
    ga_t = [a.grad for a in tb.model.arch_parameters()]
    return {
        "logits": _rel_err([logits_o], [logits_t]),
        "train_loss": _rel_err([loss_o], [loss_t]),
        "weight_grads": _rel_err(gw_o, gw_t),
        "alpha_grads": _rel_err(ga_o, ga_t),
    }


# ----- data -------------------------------------------------------------------------------
def synthetic_batches(size: NetSize, batch_size: int, seed: int, device: torch.device,
                      dtype: torch.dtype = torch.float32) -> tuple[Batch, Batch]:
    g = torch.Generator().manual_seed(seed)

    def batch() -> Batch:
        x = torch.randn(batch_size, 3, size.image_size, size.image_size, generator=g, dtype=dtype)
        y = torch.randint(0, size.num_classes, (batch_size,), generator=g)
        return x.to(device), y.to(device)
    return batch(), batch()


def in_memory_batches(size: NetSize, batch_size: int, num_images: int, seed: int,
                      device: torch.device) -> tuple[Iterator[Batch], Iterator[Batch]]:
    """The search's own data path on CIFAR-sized synthetic uint8 images: two infinite iterators."""
    from fairdarts.data import (
        DATASETS, BatchAugment, InfiniteBatches, InMemoryImages, InMemoryLoader, split_train_portion,
    )

    info = DATASETS["cifar10"]
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, size.image_size, size.image_size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, size.num_classes, (num_images,), generator=g)
    data = InMemoryImages(images, labels, info)
    w_idx, a_idx = split_train_portion(num_images, 0.5)
    augment = BatchAugment(info.mean, info.std)
    loaders = [InMemoryLoader(data, idx, batch_size, device, shuffle=True, augment=augment, seed=seed + k)
               for k, idx in enumerate((w_idx, a_idx))]
    return InfiniteBatches(loaders[0]), InfiniteBatches(loaders[1])


# ----- timing and memory ------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(algo: Algorithm, size: NetSize, batch_size: int, warmup: int, repeats: int, seed: int,
              device: torch.device, num_images: int) -> dict[str, dict[str, float]]:
    """Alternate ours / textbook on the same batches; per implementation: step-time stats
    (and CUDA peak memory); for ours also the share of the step spent waiting for data."""
    ours = build_ours(algo, size, seed, device)
    steps = {"ours": ours, "textbook": build_textbook(algo, size, ours.model.state_dict(), device)}
    try:
        train_it, arch_it = in_memory_batches(size, batch_size, num_images, seed, device)
        in_memory = True
    except ImportError:  # fairdarts.data absent: fixed batches, no data-wait figure
        train, arch = synthetic_batches(size, batch_size, seed, device)
        train_it, arch_it, in_memory = itertools.repeat(train), itertools.repeat(arch), False
    times: dict[str, dict[str, list[float]]] = {
        k: {m: [] for m in ("step", "step_cpu", "weight", "weight_cpu")} for k in IMPLEMENTATIONS}
    peak: dict[str, int] = {k: 0 for k in IMPLEMENTATIONS}
    wait = 0.0
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        train, arch = next(train_it), next(arch_it)
        _sync(device)
        fetch = time.perf_counter() - t0
        order = IMPLEMENTATIONS if i % 2 == 0 else IMPLEMENTATIONS[::-1]
        for impl in order:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t, c = time.perf_counter(), time.thread_time()
            run_step(impl, steps[impl], train, arch, algo.unrolled)
            _sync(device)
            t, c = time.perf_counter() - t, time.thread_time() - c
            if device.type == "cuda":
                peak[impl] = max(peak[impl], torch.cuda.max_memory_allocated(device))
            tw, cw = time.perf_counter(), time.thread_time()
            run_weight_pass(impl, steps[impl], train)
            _sync(device)
            tw, cw = time.perf_counter() - tw, time.thread_time() - cw
            if i >= warmup:
                for key, value in (("step", t), ("step_cpu", c), ("weight", tw), ("weight_cpu", cw)):
                    times[impl][key].append(value)
        if i >= warmup:
            wait += fetch
    out = {}
    for impl in IMPLEMENTATIONS:
        ts = times[impl]
        out[impl] = {"median_s": statistics.median(ts["step"]), "min_s": min(ts["step"]), "max_s": max(ts["step"]),
                     "n": len(ts["step"]), "median_cpu_s": statistics.median(ts["step_cpu"]),
                     "weight_median_s": statistics.median(ts["weight"]),
                     "weight_median_cpu_s": statistics.median(ts["weight_cpu"])}
        if device.type == "cuda":
            out[impl]["peak_mib"] = peak[impl] / 2**20
    ours_total = sum(times["ours"]["step"])
    out["ours"]["data_wait_share"] = wait / (wait + ours_total) if in_memory else None
    return out


def peak_rss_subprocess(impl: str, algo_name: str, size: NetSize, batch_size: int, steps: int,
                        threads: int) -> float:
    """Peak RSS (MiB) of a fresh interpreter that builds ``impl`` and runs ``steps`` search steps."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", impl, algo_name,
           json.dumps(asdict(size)), str(batch_size), str(steps), str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def _memory_child(impl: str, algo_name: str, size_json: str, batch_size: str, steps: str, threads: str) -> None:
    torch.set_num_threads(int(threads))
    algo, size, device = ALGORITHMS[algo_name], NetSize(**json.loads(size_json)), torch.device("cpu")
    ours = build_ours(algo, size, 0, device)
    step = ours if impl == "ours" else build_textbook(algo, size, ours.model.state_dict(), device)
    if impl != "ours":
        del ours
    train, arch = synthetic_batches(size, int(batch_size), 0, device)
    for _ in range(int(steps)):
        run_step(impl, step, train, arch, algo.unrolled)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


# ----- report -----------------------------------------------------------------------------
def machine() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def print_table(rows: list[dict[str, object]], device: torch.device) -> None:
    mem = "peak MiB" + (" (CUDA)" if device.type == "cuda" else " (RSS)")
    head = f"{'algorithm':<14}{'batch':>6}  {'impl':<9}{'step s':>8}{'cpu s':>8}{'weight s':>9}{'cpu s':>8}" \
           f"{mem:>17}{'step x':>8}{'cpu x':>7}{'weight x':>9}{'cpu x':>7}{'mem ratio':>10}{'data wait':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        extra = ""
        if r["impl"] == "ours":
            share = r["data_wait_share"]
            wait = f"{100 * share:>9.1f}%" if share is not None else f"{'n/a':>10}"
            extra = (f"{r['speedup']:>7.2f}x{r['speedup_cpu']:>6.2f}x{r['weight_speedup']:>8.2f}x"
                     f"{r['weight_speedup_cpu']:>6.2f}x{r['mem_ratio']:>10.2f}{wait}")
        print(f"{r['algorithm']:<14}{r['batch']:>6}  {r['impl']:<9}{r['median_s']:>8.3f}{r['median_cpu_s']:>8.3f}"
              f"{r['weight_median_s']:>9.3f}{r['weight_median_cpu_s']:>8.3f}{r['peak_mib']:>17.0f}{extra}")


def second_over_first(rows: list[dict[str, object]]) -> dict[int, float]:
    ours = {(r["algorithm"], r["batch"]): r["median_s"] for r in rows if r["impl"] == "ours"}
    return {bs: ours[("darts_2nd", bs)] / t for (algo, bs), t in ours.items()  # type: ignore[operator]
            if algo == "fairdarts_1st" and ("darts_2nd", bs) in ours}


def write_json(path: Path, result: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--quick", action="store_true", help="tiny net (C=4, 3 layers, 16 px), batch 8, 3 repeats")
    p.add_argument("--size", choices=list(SIZES), default=None,
                   help="full: C=16, 8 layers, 32 px (default); small: C=8, 5 layers, 16 px; quick: as --quick")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 32 64 (quick: 8)")
    p.add_argument("--algorithms", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS))
    p.add_argument("--repeats", type=int, default=None, help="timed steps (default 10, quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--memory-steps", type=int, default=1, help="steps run by each peak-RSS subprocess")
    p.add_argument("--check-batch", type=int, default=4, help="batch size of the equality check")
    p.add_argument("--check-dtype", choices=["float64", "float32"], default="float64",
                   help="precision of the equality check (float32: the second-order finite difference "
                        "divides rounding noise by 2 eps, so only float64 shows the two are the same)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--images", type=int, default=50000, help="synthetic images in the in-memory data path")
    p.add_argument("--memory-only", action="store_true", help="only the peak-RSS subprocesses (CPU)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "vs_textbook.json")
    return p


def measure_peak_rss(args: argparse.Namespace, size: NetSize, batch_sizes: list[int],
                     result: dict[str, object]) -> dict[tuple[str, int, str], float]:
    """Peak RSS of one fresh subprocess per (algorithm, batch, implementation), saved in ``result``."""
    peaks: dict[tuple[str, int, str], float] = {}
    for name in args.algorithms:
        for bs in batch_sizes:
            for impl in IMPLEMENTATIONS:
                peaks[name, bs, impl] = peak_rss_subprocess(impl, name, size, bs, args.memory_steps, args.threads)
            print(f"peak RSS {name} batch {bs}: ours {peaks[name, bs, 'ours']:.0f} MiB, "
                  f"textbook {peaks[name, bs, 'textbook']:.0f} MiB", flush=True)
    result["peak_rss_mib"] = [{"algorithm": a, "batch": b, "impl": i, "peak_mib": v}
                              for (a, b, i), v in peaks.items()]
    write_json(args.out, result)
    return peaks


def add_ratios(ours: dict[str, object], tb: dict[str, object]) -> None:
    """Textbook over ours for step time, weight-pass time (wall and CPU); ours over textbook for memory."""
    ours["speedup"] = tb["median_s"] / ours["median_s"]
    ours["speedup_cpu"] = tb["median_cpu_s"] / ours["median_cpu_s"]
    ours["weight_speedup"] = tb["weight_median_s"] / ours["weight_median_s"]
    ours["weight_speedup_cpu"] = tb["weight_median_cpu_s"] / ours["weight_median_cpu_s"]
    ours["mem_ratio"] = ours["peak_mib"] / tb["peak_mib"]


def bench_algorithm(name: str, args: argparse.Namespace, size: NetSize, batch_sizes: list[int], repeats: int,
                    images: int, device: torch.device, peaks: dict[tuple[str, int, str], float],
                    result: dict[str, object]) -> None:
    """Equality check, then timing per batch size of one algorithm, appended to ``result['rows']``."""
    rows: list[dict[str, object]] = result["rows"]  # type: ignore[assignment]
    algo = ALGORITHMS[name]
    check = compare_implementations(algo, size, args.check_batch, device=device,
                                    dtype=getattr(torch, args.check_dtype))
    result["equality_rel_err"][name] = check  # type: ignore[index]
    print(f"equality {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in check.items()), flush=True)
    for bs in batch_sizes:
        timing = time_pair(algo, size, bs, args.warmup, repeats, seed=0, device=device, num_images=images)
        for impl in IMPLEMENTATIONS:
            if device.type == "cpu":
                timing[impl]["peak_mib"] = peaks[name, bs, impl]
            rows.append({"algorithm": name, "batch": bs, "impl": impl, **timing[impl]})
        ours, tb = rows[-2], rows[-1]
        add_ratios(ours, tb)
        print(f"{name} batch {bs}: ours {ours['median_s']:.2f} s, textbook {tb['median_s']:.2f} s", flush=True)
        result["ours_second_over_first"] = second_over_first(rows)
        write_json(args.out, result)  # after every configuration: a long run leaves partial results


def print_summary(result: dict[str, object], device: torch.device, out: Path) -> None:
    print()
    print(f"machine: {result['machine']}")
    print_table(result["rows"], device)  # type: ignore[arg-type]
    for bs, ratio in result.get("ours_second_over_first", {}).items():  # type: ignore[union-attr]
        print(f"ours second order / first order, batch {bs}: {ratio:.2f}x")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.quick = args.quick or args.size == "quick"
    size = QUICK if args.quick else SIZES[args.size or "full"]
    batch_sizes = args.batch_sizes or ([8] if args.quick else [32, 64])
    repeats = args.repeats or (3 if args.quick else 10)
    images = min(args.images, 512) if args.quick else args.images
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    allocator_tuned = keep_freed_memory()  # as the command-line tools do (both implementations gain)

    result: dict[str, object] = {"machine": machine(), "device": str(device), "net": asdict(size),
                                  "allocator_keeps_freed_memory": allocator_tuned,
                                  "repeats": repeats, "warmup": args.warmup, "check_dtype": args.check_dtype,
                                  "check_batch": args.check_batch, "equality_rel_err": {}, "rows": []}
    peaks: dict[tuple[str, int, str], float] = {}
    if device.type == "cpu":
        # First, while this process is small: Linux keeps a parent's ru_maxrss in a forked child.
        peaks = measure_peak_rss(args, size, batch_sizes, result)
    if args.memory_only:
        return 0
    for name in args.algorithms:
        bench_algorithm(name, args, size, batch_sizes, repeats, images, device, peaks, result)
    print_summary(result, device, args.out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory-child":
        _memory_child(*sys.argv[2:8])
    else:
        sys.exit(main())
