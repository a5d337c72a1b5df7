"""Memory of one training step per image, measured, against the up-front estimate that refuses
runs too large for the machine (:mod:`fairdarts.search_space.memory`).

    python benchmarks/bench_memory.py                     # the published sizes, CPU peak RSS
    python benchmarks/bench_memory.py --models s2_supernet FairNAS_A --image_size 128
    python benchmarks/bench_memory.py --quick             # tiny sizes, seconds per process

For each model (the Fair DARTS cell supernet, the derived FairDARTS_a with its auxiliary head,
the S2 supernet of the ImageNet space, the derived FairNAS_A) and batch size, a fresh process
builds the model and runs one training step: forward, backward over every parameter (alphas
included) and an SGD step with momentum, so that gradients and momentum buffers exist as in a
run. Its peak memory (``ru_maxrss`` on the CPU, ``torch.cuda.max_memory_allocated`` on CUDA)
grows with the batch: the slope over the batch sizes is the memory per image (activations kept
for the backward and their gradients), the intercept the fixed part (process, weights,
gradients, momentum). The estimate's activation term per image and weight term are printed
beside them; the estimate is built as a lower bound, so ``measured / estimate`` must stay >= 1
per image (below 1 the refusal could turn away a run that fits). Prints a table and writes
``benchmarks/results/memory.json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.common import machine_meta, write_results  # noqa: E402

MiB = 2 ** 20


@dataclass(frozen=True)
class Model:
    """One model of the table: its kind, sizes (published / quick) and default batch sizes."""

    kind: str  # cell_supernet, cell_network, s2_supernet, s2_network
    channels: tuple[int, int]  # init channels, published / quick (cell models)
    layers: tuple[int, int]  # cells, published / quick (cell models)
    image_size: tuple[int, int]
    batches: tuple[int, ...]
    num_classes: int


MODELS: dict[str, Model] = {
    "cell_supernet": Model("cell_supernet", (16, 4), (8, 3), (32, 16), (8, 16), 10),
    "FairDARTS_a": Model("cell_network", (36, 8), (20, 5), (32, 16), (8, 16), 10),
    "s2_supernet": Model("s2_supernet", (0, 0), (0, 0), (224, 64), (1, 2, 4), 1000),
    "FairNAS_A": Model("s2_network", (0, 0), (0, 0), (224, 64), (1, 2, 4), 1000),
}


def arch_of(name: str) -> object:
    """The ``arch`` argument of :func:`~fairdarts.search_space.memory.training_memory`: the
    candidate ops of a supernet, the genotype of a derived network."""
    from fairdarts.search_space import FAIRDARTS_PRIMITIVES, get_genotype, mobile_primitives

    kind = MODELS[name].kind
    if kind == "cell_supernet":
        return FAIRDARTS_PRIMITIVES
    return mobile_primitives(False) if kind == "s2_supernet" else get_genotype(name)


def build(name: str, quick: bool, image_size: int, width_mult: float) -> torch.nn.Module:
    """The model, as the fresh process measures it."""
    import fairdarts
    from fairdarts.search_space import FAIRDARTS_PRIMITIVES, MobileSupernet, Supernet

    m, k = MODELS[name], int(quick)
    if m.kind == "cell_supernet":
        return Supernet(m.channels[k], m.num_classes, m.layers[k], FAIRDARTS_PRIMITIVES, gate="sigmoid")
    if m.kind == "cell_network":
        return fairdarts.build_network(name, m.channels[k], m.layers[k], m.num_classes, auxiliary=True,
                                       image_size=image_size)
    if m.kind == "s2_supernet":
        return MobileSupernet(m.num_classes, width_mult=width_mult)
    return fairdarts.build_network(name, num_classes=m.num_classes, width_mult=width_mult, image_size=image_size)


def child(name: str, batch: int, quick: bool, image_size: int, width_mult: float, device: str) -> dict:
    """Runs in the fresh process: one training step; peak memory in MiB."""
    torch.manual_seed(0)
    dev = torch.device(device)
    net = build(name, quick, image_size, width_mult).to(dev).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, image_size, image_size, device=dev)
    y = torch.randint(0, MODELS[name].num_classes, (batch,), device=dev)
    out = net(x)
    logits, aux = out if isinstance(out, tuple) else (out, None)
    loss = F.cross_entropy(logits, y) + (0.4 * F.cross_entropy(aux, y) if aux is not None else 0)
    loss.backward()
    optimizer.step()
    peak = (torch.cuda.max_memory_allocated(dev) / MiB if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    return {"batch": batch, "peak_mib": peak}


def measure(name: str, batches: list[int], quick: bool, image_size: int, width_mult: float, device: str) -> dict:
    """Peak memory per batch size (a process each), slope and intercept, and the estimate."""
    from fairdarts.search_space.memory import training_memory

    m, k = MODELS[name], int(quick)
    peaks = []
    for b in batches:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", name, str(b), str(int(quick)),
               str(image_size), str(width_mult), device]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{name} at batch {b} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        peaks.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])
        print(f"{name} batch {b}: peak {peaks[-1]:.0f} MiB", file=sys.stderr, flush=True)
    slope = (peaks[-1] - peaks[0]) / (batches[-1] - batches[0])
    # The estimate needs no model: none is built in this process.
    estimate = training_memory(arch_of(name), 1, image_size, m.channels[k], m.layers[k], width_mult)  # type: ignore[arg-type]
    per_image_estimate = estimate.activations / MiB
    return {"model": name, "image_size": image_size, "width_mult": width_mult,
            "init_channels": m.channels[k] or None, "layers": m.layers[k] or None, "batches": batches,
            "peak_mib": peaks, "mib_per_image": slope, "fixed_mib": peaks[0] - slope * batches[0],
            "estimate_mib_per_image": per_image_estimate, "estimate_weights_mib": estimate.weights / MiB,
            "measured_over_estimate": slope / per_image_estimate}


def table(rows: list[dict]) -> str:
    head = (f"{'model':<14}{'px':>5}{'batches':>10}{'MiB/image':>11}{'fixed MiB':>11}{'estimate/image':>16}"
            f"{'measured/est.':>15}{'est. weights':>14}")
    lines = [head, "-" * len(head)]
    lines += [f"{r['model']:<14}{r['image_size']:>5}{','.join(map(str, r['batches'])):>10}{r['mib_per_image']:>11.1f}"
              f"{r['fixed_mib']:>11.0f}{r['estimate_mib_per_image']:>16.1f}{r['measured_over_estimate']:>14.2f}x"
              f"{r['estimate_weights_mib']:>14.1f}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: C=4/8, 3/5 cells, 16 px cells, 64 px S2 at width 0.25")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes, at least two (default per model: 8 16 for cells, 1 2 4 for S2)")
    p.add_argument("--image_size", type=int, default=None, help="default: 32 for cells, 224 for S2 (quick 16 / 64)")
    p.add_argument("--width_mult", type=float, default=1.0, help="S2 width (quick: 0.25)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "memory.json"))
    args = p.parse_args(argv)
    if args.batches is not None and len(set(args.batches)) < 2:
        p.error("--batches needs at least two different sizes (the slope is the memory per image)")
    width = 0.25 if args.quick and args.width_mult == 1.0 else args.width_mult
    rows = []
    for name in args.models:
        m = MODELS[name]
        size = args.image_size or m.image_size[int(args.quick)]
        batches = sorted(set(args.batches or m.batches))
        rows.append(measure(name, batches, args.quick, size, width, args.device))
        out = write_results(args.out, {**machine_meta(torch.device(args.device)),
                                       "method": "peak memory of one training step, fresh process per batch"}, rows)
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        name, batch, quick, size, width, device = sys.argv[2:8]
        print(json.dumps(child(name, int(batch), bool(int(quick)), int(size), float(width), device)))
    else:
        sys.exit(main())
