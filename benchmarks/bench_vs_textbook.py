"""Our search step against the textbook DARTS step: time, memory, data wait, equality, and
what each ingredient of the speed-up gives.

    python benchmarks/bench_vs_textbook.py                # C=16, 8 layers, 32 px, batch 32 and 64
    python benchmarks/bench_vs_textbook.py --size small   # C=8, 5 layers, 16 px (CPU smoke runs, tests)
    python benchmarks/bench_vs_textbook.py --quick        # a tiny net, a few seconds
    python benchmarks/bench_vs_textbook.py --size small --passes --ops   # and where the time goes

For each algorithm (Fair DARTS first order, DARTS second order) and batch size, the
implementations run in this process on the same batches, in an order that alternates, and a
search step (architecture step + weight step) is timed ``--repeats`` times after ``--warmup``
steps, and so is the weight pass alone (forward and backward of the training loss, what every
step and every retraining step pays). The implementations: ``ours``; on the CPU also
``pytorch_kernels``, the same supernet with the native CPU kernels switched off (PyTorch's
channels-last layers, what runs where the kernels do not); and ``textbook``. Each time is taken
twice: wall clock and the CPU time of the calling thread (``time.thread_time``); on a shared
machine the CPU time still counts only this process's own work, so its ratios hold under load.

Memory: on CUDA ``torch.cuda.max_memory_allocated``; on the CPU a fresh subprocess per
(implementation, algorithm, batch) builds the model and runs ``--memory-steps`` steps, and
reports its peak RSS (``ru_maxrss``), and per step after the first its minor page faults and
CPU time. One more subprocess, ``ours_glibc_malloc``, runs ours with glibc's default malloc
settings (``FAIRDARTS_KEEP_FREED_MEMORY=0``): what keeping freed memory saves in page faults.
The batches come from :class:`fairdarts.data.InMemoryLoader` / ``InfiniteBatches`` over
CIFAR-sized synthetic images; the time spent in ``next()`` is reported as a share of our step.

``--passes`` times the passes the step is made of and the second- / first-order ratio they
imply; ``--ops`` times each dilated depthwise convolution, ``nn.Conv2d`` against ours
(:mod:`benchmarks.breakdown`).

Before timing, both implementations get the same weights (our ``state_dict`` mapped onto the
textbook net) and must give the same logits, training loss, weight gradients and architecture
(hyper)gradients, so a speed-up cannot come from computing something else. The table is
printed and everything is written to ``benchmarks/results/vs_textbook.json``.
"""
from __future__ import annotations

import argparse
import contextlib
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
from typing import ContextManager, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.breakdown import DEPTHWISE_CASES, time_depthwise, time_passes  # noqa: E402
from benchmarks.textbook import TextbookSearch, TextbookSupernet, textbook_state  # noqa: E402
from fairdarts.cpu_allocator import ENV_SWITCH as KEEP_FREED_MEMORY  # noqa: E402
from fairdarts.cpu_allocator import keep_freed_memory  # noqa: E402
from fairdarts.search.architect import ArchObjective, Architect  # noqa: E402
from fairdarts.search.loop import SearchStep, weight_optimizer  # noqa: E402
from fairdarts.search_space import DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES, Supernet, native  # noqa: E402

Batch = tuple[Tensor, Tensor]
IMPLEMENTATIONS = ("ours", "pytorch_kernels", "textbook")
#: The peak-RSS subprocesses: implementation -> (what it runs, its environment).
MEMORY_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "ours": ("ours", {}),
    "pytorch_kernels": ("ours", {native.ENV_SWITCH: "0"}),
    "textbook": ("textbook", {}),
    "ours_glibc_malloc": ("ours", {KEEP_FREED_MEMORY: "0"}),
}


def implementations(device: torch.device) -> tuple[str, ...]:
    """What runs on ``device``: the native kernels exist only on the CPU."""
    return IMPLEMENTATIONS if device.type == "cpu" else ("ours", "textbook")


def kernels_of(impl: str) -> ContextManager[None]:
    """``pytorch_kernels`` is ours with the native kernels switched off for the call."""
    return native.switched_off() if impl == "pytorch_kernels" else contextlib.nullcontext()


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
    with kernels_of(impl):
        if isinstance(step, SearchStep):
            step(train, arch)
        else:
            step.step(*train, *arch, unrolled=unrolled)


def run_weight_pass(impl: str, step: SearchStep | TextbookSearch, train: Batch) -> None:
    """Forward and backward of the training loss into the weight gradients (no optimizer step)."""
    x, y = train
    model = step.model
    model.zero_grad(set_to_none=True)
    with kernels_of(impl):
        loss = F.cross_entropy(model(x), y)
        if isinstance(step, SearchStep):
            loss.backward(inputs=step.weights)
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


def time_implementations(algo: Algorithm, size: NetSize, batch_size: int, warmup: int, repeats: int, seed: int,
                         device: torch.device, num_images: int) -> dict[str, dict[str, float]]:
    """Alternate the implementations on the same batches; per implementation: step-time stats
    (and CUDA peak memory); for ours also the share of the step spent waiting for data."""
    impls = implementations(device)
    ours = build_ours(algo, size, seed, device)
    steps: dict[str, SearchStep | TextbookSearch] = {
        "ours": ours, "textbook": build_textbook(algo, size, ours.model.state_dict(), device)}
    if "pytorch_kernels" in impls:
        steps["pytorch_kernels"] = build_ours(algo, size, seed, device)  # same seed: the same weights
    try:
        train_it, arch_it = in_memory_batches(size, batch_size, num_images, seed, device)
        in_memory = True
    except ImportError:  # fairdarts.data absent: fixed batches, no data-wait figure
        train, arch = synthetic_batches(size, batch_size, seed, device)
        train_it, arch_it, in_memory = itertools.repeat(train), itertools.repeat(arch), False
    times: dict[str, dict[str, list[float]]] = {
        k: {m: [] for m in ("step", "step_cpu", "weight", "weight_cpu")} for k in impls}
    peak: dict[str, int] = {k: 0 for k in impls}
    wait = 0.0
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        train, arch = next(train_it), next(arch_it)
        _sync(device)
        fetch = time.perf_counter() - t0
        for impl in (impls if i % 2 == 0 else impls[::-1]):
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
    for impl in impls:
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


def memory_subprocess(variant: str, algo_name: str, size: NetSize, batch_size: int, steps: int,
                      threads: int) -> dict[str, float]:
    """A fresh interpreter runs ``steps`` search steps of one of :data:`MEMORY_VARIANTS`: its
    peak RSS (MiB), and per step after the first the minor page faults and CPU seconds."""
    impl, env = MEMORY_VARIANTS[variant]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-child", impl, algo_name,
           json.dumps(asdict(size)), str(batch_size), str(max(steps, 2)), str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **env}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_child(impl: str, algo_name: str, size_json: str, batch_size: str, steps: str, threads: str) -> None:
    keep_freed_memory()  # as the command-line tools do; FAIRDARTS_KEEP_FREED_MEMORY=0 leaves glibc's defaults
    torch.set_num_threads(int(threads))
    algo, size, device = ALGORITHMS[algo_name], NetSize(**json.loads(size_json)), torch.device("cpu")
    ours = build_ours(algo, size, 0, device)
    step = ours if impl == "ours" else build_textbook(algo, size, ours.model.state_dict(), device)
    if impl != "ours":
        del ours
    train, arch = synthetic_batches(size, int(batch_size), 0, device)
    faults, cpu = [], []
    for _ in range(int(steps)):
        f0, c0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.thread_time()
        run_step(impl, step, train, arch, algo.unrolled)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        cpu.append(time.thread_time() - c0)
    print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
                      "minor_faults_per_step": statistics.median(faults[1:]),
                      "step_cpu_s": statistics.median(cpu[1:])}))


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
    """One line per implementation; the ratios (textbook over it; memory: it over textbook) on
    every line but the textbook's, the data wait on ours."""
    mem = "peak MiB" + (" (CUDA)" if device.type == "cuda" else " (RSS)")
    head = f"{'algorithm':<14}{'batch':>6}  {'impl':<16}{'step s':>8}{'cpu s':>8}{'weight s':>9}{'cpu s':>8}" \
           f"{mem:>17}{'step x':>8}{'cpu x':>7}{'weight x':>9}{'cpu x':>7}{'mem ratio':>10}{'data wait':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        extra = ""
        if r["impl"] != "textbook":
            extra = (f"{r['speedup']:>7.2f}x{r['speedup_cpu']:>6.2f}x{r['weight_speedup']:>8.2f}x"
                     f"{r['weight_speedup_cpu']:>6.2f}x{r['mem_ratio']:>10.2f}")
        if r["impl"] == "ours":
            share = r["data_wait_share"]
            extra += f"{100 * share:>9.1f}%" if share is not None else f"{'n/a':>10}"
        print(f"{r['algorithm']:<14}{r['batch']:>6}  {r['impl']:<16}{r['median_s']:>8.3f}{r['median_cpu_s']:>8.3f}"
              f"{r['weight_median_s']:>9.3f}{r['weight_median_cpu_s']:>8.3f}{r['peak_mib']:>17.0f}{extra}")


def print_memory(rows: list[dict[str, object]]) -> None:
    """The subprocesses' table: peak RSS, page faults and CPU time per step."""
    head = f"{'algorithm':<14}{'batch':>6}  {'variant':<18}{'peak MiB':>9}{'faults/step':>13}{'cpu s/step':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['algorithm']:<14}{r['batch']:>6}  {r['impl']:<18}{r['peak_mib']:>9.0f}"
              f"{r['minor_faults_per_step']:>13.0f}{r['step_cpu_s']:>11.3f}")


def print_passes(rows: list[dict[str, object]]) -> None:
    for r in rows:
        print(f"{r['algorithm']}, batch {r['batch']}, CPU seconds, median of {r['repeats']}:")
        print(f"  A (alpha gradients only)        {r['A_s']:8.3f}")
        print(f"  W (weight gradients)            {r['W_s']:8.3f}")
        print(f"  V (weight and alpha gradients)  {r['V_s']:8.3f}")
        print(f"  first-order step (A + W)        {r['first_order_s']:8.3f}")
        print(f"  second-order step (2W + V + 2A) {r['second_order_s']:8.3f}")
        print(f"  second / first: predicted {r['predicted_ratio']:.2f}x, measured {r['measured_ratio']:.2f}x, "
              f"floor of any exact implementation {r['floor_ratio']:.1f}x")


def print_ops(rows: list[dict[str, object]]) -> None:
    head = f"{'k':>2} {'d':>2} {'s':>2} {'C':>4} {'px':>4} {'nn.Conv2d ms':>13} {'ours ms':>8} {'speed-up':>9} " \
           f"{'rel diff':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['kernel']:>2} {r['dilation']:>2} {r['stride']:>2} {r['channels']:>4} {r['size']:>4} "
              f"{r['textbook_ms']:>13.2f} {r['ours_ms']:>8.2f} {r['speedup']:>8.1f}x {r['max_rel_diff']:>9.1e}")


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
    p.add_argument("--memory-steps", type=int, default=2,
                   help="steps run by each memory subprocess (at least 2: faults and CPU time after the first)")
    p.add_argument("--check-batch", type=int, default=4, help="batch size of the equality check")
    p.add_argument("--check-dtype", choices=["float64", "float32"], default="float64",
                   help="precision of the equality check (float32: the second-order finite difference "
                        "divides rounding noise by 2 eps, so only float64 shows the two are the same)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--images", type=int, default=50000, help="synthetic images in the in-memory data path")
    p.add_argument("--memory-only", action="store_true", help="only the memory subprocesses (CPU)")
    p.add_argument("--passes", action="store_true",
                   help="also time the passes A, W, V each step is made of (CPU time, first batch size)")
    p.add_argument("--ops", action="store_true",
                   help="also time each dilated depthwise convolution, nn.Conv2d against ours (CPU time)")
    p.add_argument("--ops-batch", type=int, default=None, help="batch of --ops (default 32, quick 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "vs_textbook.json")
    return p


def measure_memory(args: argparse.Namespace, size: NetSize, batch_sizes: list[int],
                   result: dict[str, object]) -> dict[tuple[str, int, str], float]:
    """One fresh subprocess per (algorithm, batch, memory variant), saved in ``result['memory']``;
    returns the peak RSS of each."""
    rows: list[dict[str, object]] = []
    for name in args.algorithms:
        for bs in batch_sizes:
            for variant in MEMORY_VARIANTS:
                rows.append({"algorithm": name, "batch": bs, "impl": variant,
                             **memory_subprocess(variant, name, size, bs, args.memory_steps, args.threads)})
            print(f"memory {name} batch {bs}: " + ", ".join(f"{r['impl']} {r['peak_mib']:.0f} MiB "
                                                             f"{r['minor_faults_per_step']:.0f} faults/step"
                                                             for r in rows[-len(MEMORY_VARIANTS):]), flush=True)
    result["memory"] = rows
    write_json(args.out, result)
    return {(r["algorithm"], r["batch"], r["impl"]): r["peak_mib"] for r in rows}  # type: ignore[misc]


def add_ratios(row: dict[str, object], tb: dict[str, object]) -> None:
    """Textbook over ``row`` for step time, weight-pass time (wall and CPU); ``row`` over textbook for memory."""
    row["speedup"] = tb["median_s"] / row["median_s"]
    row["speedup_cpu"] = tb["median_cpu_s"] / row["median_cpu_s"]
    row["weight_speedup"] = tb["weight_median_s"] / row["weight_median_s"]
    row["weight_speedup_cpu"] = tb["weight_median_cpu_s"] / row["weight_median_cpu_s"]
    row["mem_ratio"] = row["peak_mib"] / tb["peak_mib"]


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
        timing = time_implementations(algo, size, bs, args.warmup, repeats, seed=0, device=device, num_images=images)
        new = []
        for impl, stats in timing.items():
            if device.type == "cpu":
                stats["peak_mib"] = peaks[name, bs, impl]
            new.append({"algorithm": name, "batch": bs, "impl": impl, **stats})
        tb = next(r for r in new if r["impl"] == "textbook")
        for row in new:
            if row is not tb:
                add_ratios(row, tb)
        rows += new
        print(f"{name} batch {bs}: " + ", ".join(f"{r['impl']} {r['median_s']:.2f} s" for r in new), flush=True)
        result["ours_second_over_first"] = second_over_first(rows)
        write_json(args.out, result)  # after every configuration: a long run leaves partial results


def bench_breakdown(args: argparse.Namespace, size: NetSize, batch: int, repeats: int,
                    result: dict[str, object]) -> None:
    """``--passes`` and ``--ops``: where the time of our step goes (CPU time of this thread)."""
    if args.passes:
        result["passes"] = []
        for name in args.algorithms:
            step = build_ours(ALGORITHMS[name], size, 0, torch.device("cpu"))
            train, arch = synthetic_batches(size, batch, 0, torch.device("cpu"))
            result["passes"].append({"algorithm": name, "batch": batch, "repeats": repeats,  # type: ignore[union-attr]
                                     **time_passes(step, train, arch, repeats)})
            write_json(args.out, result)
    if args.ops:
        ops_batch = args.ops_batch or (2 if args.quick else 32)
        result["ops"] = [time_depthwise(*case, batch=ops_batch, repeats=repeats) for case in DEPTHWISE_CASES]
        write_json(args.out, result)


def print_summary(result: dict[str, object], device: torch.device, out: Path) -> None:
    print()
    print(f"machine: {result['machine']}")
    print_table(result["rows"], device)  # type: ignore[arg-type]
    for bs, ratio in result.get("ours_second_over_first", {}).items():  # type: ignore[union-attr]
        print(f"ours second order / first order, batch {bs}: {ratio:.2f}x")
    if result.get("memory"):
        print("\nmemory subprocesses (ours_glibc_malloc: ours with FAIRDARTS_KEEP_FREED_MEMORY=0):")
        print_memory(result["memory"])  # type: ignore[arg-type]
    if result.get("passes"):
        print()
        print_passes(result["passes"])  # type: ignore[arg-type]
    if result.get("ops"):
        print("\ndilated depthwise convolutions, forward + backward, channels-last (CPU ms, medians):")
        print_ops(result["ops"])  # type: ignore[arg-type]
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
    allocator_tuned = keep_freed_memory()  # as the command-line tools do (every implementation gains)

    result: dict[str, object] = {"machine": machine(), "device": str(device), "net": asdict(size),
                                  "allocator_keeps_freed_memory": allocator_tuned, "kernels": native.status(),
                                  "repeats": repeats, "warmup": args.warmup, "check_dtype": args.check_dtype,
                                  "check_batch": args.check_batch, "equality_rel_err": {}, "rows": []}
    peaks: dict[tuple[str, int, str], float] = {}
    if device.type == "cpu":
        # First, while this process is small: Linux keeps a parent's ru_maxrss in a forked child.
        peaks = measure_memory(args, size, batch_sizes, result)
    if not args.memory_only:
        for name in args.algorithms:
            bench_algorithm(name, args, size, batch_sizes, repeats, images, device, peaks, result)
        if device.type == "cpu":
            bench_breakdown(args, size, batch_sizes[0], repeats, result)
    print_summary(result, device, args.out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory-child":
        _memory_child(*sys.argv[2:8])
    else:
        sys.exit(main())
