"""``python -m fairdarts.doctor`` (``fairdarts-doctor``): the environment report to paste into a bug report.

Like ``python -m torch.utils.collect_env``, for what this toolkit depends on: versions, CUDA and
its GPUs, the native CPU kernels of the search (on, or why not; where the library is cached;
OpenMP and threads), the datasets found under ``--data``, Graphviz, and what will therefore be
slow or missing. Asking for the native kernels builds them when none are cached for this CPU
yet, as the first search would (a few seconds); ``FAIRDARTS_NATIVE_KERNELS=0`` skips that.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

import fairdarts
from fairdarts.data import MissingFiles, folder_split, split_files
from fairdarts.errors import CLIParser, run_cli
from fairdarts.help_groups import add_flag, help_sections
from fairdarts.invocation import command, prog
from fairdarts.search_space import native

DESCRIPTION = ("Print the environment a bug report needs: Python, PyTorch, CUDA and GPUs, the native CPU "
               "kernels, the datasets under --data, Graphviz, and what will be slow or missing.")
IN_MEMORY = ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist")


@dataclass
class Report:
    """The lines of the report, and the notes on what will be slow or missing."""
    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, label: str, value: str) -> None:
        self.lines.append(f"{label + ':':<16}{value}")


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def software(report: Report) -> None:
    report.add("fairdarts", f"{fairdarts.__version__} ({Path(fairdarts.__file__).parent})")
    report.add("python", f"{platform.python_version()} ({sys.executable})")
    report.add("platform", f"{platform.platform()}, {platform.machine()}")
    report.add("torch", torch.__version__)
    report.add("torchvision", _version("torchvision"))


def gpus(report: Report) -> None:
    """CUDA as PyTorch sees it; no GPU is a note: everything runs on the CPU."""
    built = torch.version.cuda
    if not torch.cuda.is_available():
        report.add("CUDA", f"not available (torch built {'with CUDA ' + built if built else 'for the CPU only'})")
        report.notes.append("no CUDA GPU: searches and retraining run on the CPU, hours for what a GPU does in "
                            "minutes; keep to small runs (--subset, --layers, --init_channels) as the README's "
                            "walkthrough does")
        return
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    report.add("CUDA", f"{built}, {len(names)} GPU{'s' if len(names) != 1 else ''}")
    for i, name in enumerate(names):
        major, minor = torch.cuda.get_device_capability(i)
        report.add(f"  cuda:{i}", f"{name} (compute capability {major}.{minor})")


def cpu(report: Report) -> None:
    """Cores, PyTorch's threads and the native kernels' state (the search's CPU speed)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report.add("CPU", f"{cores} cores usable, torch {torch.get_num_threads()} intra-op threads "
                      f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})")
    state = native.status()
    report.add("native kernels", state)
    lib = native.library()
    if lib is not None:
        report.add("  cached at", str(Path(lib._name).parent))
        if not native.openmp():
            report.notes.append("native kernels without OpenMP: they run on one thread; a compiler with "
                                "OpenMP (gcc) makes them use --threads")
    else:
        switched_off = os.environ.get(native.ENV_SWITCH) == "0"
        remedy = "" if switched_off else "; a C compiler (gcc, clang or CC=...) enables them"
        report.notes.append(f"native kernels {state}: the search's CPU step runs PyTorch's kernels, the same "
                            f"numbers but slower{remedy}")


def datasets(report: Report, root: Path) -> None:
    """Which datasets ``--data ROOT`` holds, in the layouts the commands read. MNIST and
    Fashion-MNIST files at the top of ROOT are the same names, so they read as either."""
    files = {name: {split: _files(name, root, split) for split in ("train", "test")} for name in IN_MEMORY}
    if files["mnist"] == files["fashion_mnist"]:
        files["mnist or fashion_mnist (same idx file names; --dataset says which)"] = files.pop("mnist")
        del files["fashion_mnist"]
    found = [f"{name} ({', '.join(s for s, paths in splits.items() if paths)})"
             for name, splits in files.items() if any(splits.values())]
    folders = [split for split in ("train", "test") if folder_split(root, split)]  # type: ignore[arg-type]
    if folders:
        found.append(f"ImageNet/folder layout ({', '.join(folders)})")
    report.add("datasets", f"{root}: " + ("; ".join(found) if found else "none found"))
    if not found:
        report.notes.append(f"no dataset under {root}: pass --data DIR, or --download to a run "
                            "(CIFAR, SVHN, MNIST, Fashion-MNIST); --dataset synthetic needs none")


def _files(name: str, root: Path, split: str) -> tuple[Path, ...]:
    """The files of a split of dataset ``name`` under ``root``; empty when one is missing."""
    try:
        return tuple(split_files(name, root, split))  # type: ignore[arg-type]
    except MissingFiles:
        return ()


def graphviz(report: Report) -> None:
    dot = shutil.which("dot")
    if dot is None:
        report.add("Graphviz dot", "not found")
        report.notes.append("no Graphviz `dot`: cell pictures are written as .dot source only "
                            f"(apt-get install graphviz, then `{command('visualize')} --arch RUN_DIR`)")
        return
    done = subprocess.run([dot, "-V"], capture_output=True, text=True, timeout=30)
    report.add("Graphviz dot", f"{dot} ({(done.stderr or done.stdout).strip() or 'version unknown'})")


def collect(root: Path) -> Report:
    report = Report()
    for part in (software, gpus, cpu, graphviz):
        part(report)
    datasets(report, root)
    return report


def build_parser() -> CLIParser:
    p = CLIParser(prog=prog("doctor"), description=DESCRIPTION)
    add_flag(help_sections(p), "--data", default="data",
             help="dataset root to look in, as given to the other commands (default: data)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = collect(Path(args.data).expanduser())
    print("\n".join(report.lines))
    print("\nslow or missing:" if report.notes else "\nnothing slow or missing found")
    for note in report.notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    run_cli(main)
