"""``python evaluate.py --model_path X`` (``fairdarts-evaluate``): FLOPs and params, then top-1 / top-5
and loss on the test set.

A project checkpoint needs no other flag (genotype, sizes and dataset are inside); an official
one takes the genotype from ``--arch`` or from ``fairdarts/best_models.yaml``. ``--inputs FILE``
evaluates a saved tensor batch (``{'input': [N,C,H,W] normalised, 'target'?: [N], 'logits'?: [N,K]}``)
instead of a dataset; with reference logits in it the largest difference is printed.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from fairdarts.checkpoint import load_checkpoint, save_checkpoint
from fairdarts.config import field_help, resolve_config
from fairdarts.cpu_allocator import keep_freed_memory
from fairdarts.data import DATASET_CHOICES, BatchAugment, InMemoryImages, InMemoryLoader, load_dataset, make_dataloader
from fairdarts.distributed import resolve_device
from fairdarts.errors import UserError, counted, one_line, run_cli
from fairdarts.evaluation.evaluator import (
    MANIFEST, EvalResult, LoadedModel, evaluate, load_model, plot_confusion,
)
from fairdarts.evaluation.export import check_onnx, export_onnx
from fairdarts.flops import count_flops_params
from fairdarts.invocation import prog
from fairdarts.run_dir import progress
from fairdarts.safe_io import check_outputs, mark_output
from fairdarts.search_space import NetworkSpec
from fairdarts.search_space.topology import MAX_LAYERS
from fairdarts.threads import HELP as THREADS_HELP, set_threads

DESCRIPTION = "Evaluate a retrained (or official) checkpoint: top-1 / top-5, loss, throughput"


@dataclass
class EvalConfig:
    model_path: str | None = field_help(None, "checkpoint: a train.py checkpoint, "
                                              "or an official {'state_dict': ...} file",
                                        required=True)
    arch: str | None = field_help(None, "genotype for official checkpoints "
                                        "(name, JSON, Genotype(...) text, run folder)")
    init_channels: int | None = field_help(None, "network width for official checkpoints (default: manifest, else 36)",
                                           low=1)
    layers: int | None = field_help(None, "cells for official checkpoints (default: manifest, else 20)", low=3,
                                     high=MAX_LAYERS)
    dataset: str | None = field_help(None, "test set (default: the checkpoint's, else cifar10)",
                                     choices=DATASET_CHOICES)
    data: str = field_help("data", "dataset root")
    download: bool = field_help(False, "download the dataset into --data if it is missing")
    subset: int | None = field_help(None, "evaluate only the first N test images", low=1)
    image_size: int | None = field_help(None, "resize test images (default: the checkpoint's / dataset's)", low=4)
    inputs: str | None = field_help(None, "evaluate a saved torch file instead of a dataset: {'input': float "
                                          "[N, C, H, W] normalised images, 'target': [N] labels (optional), "
                                          "'logits': [N, K] reference logits (optional; the largest difference "
                                          "is printed)}")
    batch_size: int = field_help(256, "batch size", low=1, group="devices/speed")
    workers: int = field_help(4, "DataLoader workers (on-disk datasets)", low=0)
    device: str = field_help("auto", "auto, cpu, cuda or cuda:N")
    threads: int | None = field_help(None, THREADS_HELP, low=1)
    amp: bool = field_help(False, "mixed precision on CUDA")
    amp_dtype: str = field_help("bf16", "autocast dtype of --amp", choices=("bf16", "fp16"))
    channels_last: bool = field_help(False, "channels-last memory format")
    progress: bool = field_help(True, "progress bar with ETA when stderr is a terminal")
    per_class: bool = field_help(False, "print the accuracy of every class")
    confusion: str | None = field_help(None, "write the confusion matrix as a PNG here")
    dump_logits: str | None = field_help(None, "save {'logits', 'targets'} of every test image here (torch file)")
    export: str | None = field_help(None, "also export the network for deployment", choices=("onnx",))
    export_path: str | None = field_help(None, "where --export writes (default: beside the checkpoint, .onnx)")
    overwrite: bool = field_help(False, "replace an existing output file that this tool did not write")


def dataset_batches(cfg: EvalConfig, dataset: str, image_size: int | None, device: torch.device):
    """(batches, the dataset's info, class names) of the test split, first ``--subset`` images only."""
    data = load_dataset(dataset, cfg.data, "test", download=cfg.download, image_size=image_size)
    n = len(data) if cfg.subset is None else min(cfg.subset, len(data))
    info = data.info
    names = list(getattr(info, "classes", None) or []) or None
    if isinstance(data, InMemoryImages):
        plain = BatchAugment(info.mean, info.std, crop_padding=0, flip=False)
        loader = InMemoryLoader(data, list(range(n)), batch_size=cfg.batch_size, device=device, shuffle=False,
                                augment=plain, seed=0)
    else:
        subset = torch.utils.data.Subset(data, range(n)) if n < len(data) else data
        loader = make_dataloader(subset, batch_size=cfg.batch_size, shuffle=False, workers=cfg.workers, seed=0,
                                 rank=0, world_size=1, drop_last=False, device=device)
    return loader, info, names


def tensor_batches(path: str, batch_size: int, device: torch.device, spec: NetworkSpec):
    """Batches of a saved ``{'input', 'target'?, 'logits'?}`` file, and its reference logits; the
    file is checked against the network (``spec``) first, so a bad one is one line, not a traceback."""
    blob = load_checkpoint(path)
    x = blob.get("input")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point() or len(x) == 0:
        raise UserError(f"--inputs {path}: expected a non-empty float 'input' tensor [N, C, H, W] (normalised images)")
    n, channels, size = len(x), spec.in_channels, spec.image_size
    if x.shape[1] != channels:
        raise UserError(f"--inputs {path}: 'input' has shape {list(x.shape)}; the network takes [N, {channels}, H, W] "
                        f"images (trained at {size} x {size})")
    if not bool(torch.isfinite(x).all()):
        raise UserError(f"--inputs {path}: 'input' holds NaN or infinite values")
    k = spec.num_classes
    y = blob.get("target", torch.zeros(n, dtype=torch.long))
    if not isinstance(y, torch.Tensor) or y.shape != (n,) or y.is_floating_point() or y.is_complex() \
            or (n and (int(y.min()) < 0 or int(y.max()) >= k)):
        raise UserError(f"--inputs {path}: 'target' must be {n} integer labels in 0..{k - 1}")
    reference = blob.get("logits")
    if reference is not None and (not isinstance(reference, torch.Tensor) or tuple(reference.shape) != (n, k)):
        raise UserError(f"--inputs {path}: 'logits' must be a [{n}, {k}] tensor")
    y = y.long()
    batches = [(x[i:i + batch_size].float().to(device), y[i:i + batch_size].to(device))
               for i in range(0, n, batch_size)]
    return batches, reference, "target" in blob


def _outputs(cfg: EvalConfig) -> list[tuple[str, str | None]]:
    default = str(Path(cfg.model_path).with_suffix(".onnx"))  # type: ignore[arg-type]
    export = (cfg.export_path or default) if cfg.export else None
    return [("--confusion", cfg.confusion), ("--dump_logits", cfg.dump_logits),
            ("--export_path" if cfg.export_path else "--export (beside the checkpoint)", export)]


def check_paths(cfg: EvalConfig) -> None:
    """Before any work, :func:`check_outputs`: no output may be or lie in an input (the checkpoint,
    --inputs, --arch, the manifest, the dataset folder --data) or replace a file without --overwrite."""
    arch = cfg.arch if cfg.arch and Path(cfg.arch).exists() else None
    data = cfg.data if not cfg.inputs and cfg.dataset != "synthetic" else None
    inputs = [("--model_path", cfg.model_path), ("--inputs", cfg.inputs), ("--arch", arch), ("--data", data),
              ("manifest", str(MANIFEST) if MANIFEST.is_file() else None)]
    check_outputs(_outputs(cfg), inputs, cfg.overwrite)


def print_cost(loaded: LoadedModel) -> tuple[int, ...]:
    spec = loaded.spec
    shape = (1, spec.in_channels, spec.image_size, spec.image_size)
    cost = count_flops_params(loaded.model, shape)
    sizes = (f"width_mult {spec.width_mult}" if spec.mobile
             else f"init_channels {spec.init_channels}, layers {spec.layers}")
    print(f"model: {loaded.source} checkpoint, genotype form {spec.genotype.form}, {sizes}, "
          f"{spec.num_classes} classes, auxiliary head {'yes' if spec.auxiliary else 'no'}")
    print(f"FLOPs {cost.flops / 1e6:.1f}M  params {cost.params / 1e6:.3f}M "
          f"({cost.params_no_aux / 1e6:.3f}M without the auxiliary head)  input {list(shape)}")
    return shape


def report(result: EvalResult, names: list[str] | None, per_class: bool, threads: int) -> None:
    print(f"test: top-1 {result.top1:.2f}%  top-5 {result.top5:.2f}%  loss {result.loss:.4f}  "
          f"({result.n} images, {result.images_per_s:.1f} images/s, {counted(threads, 'CPU thread')})")
    if per_class:
        for i, acc in enumerate(result.per_class.tolist()):
            label = names[i] if names and i < len(names) else str(i)
            print(f"  class {label}: {acc:.2f}% of {int(result.confusion[i].sum())}")


def main(argv: Sequence[str] | None = None) -> int:
    keep_freed_memory()
    cfg = resolve_config(EvalConfig, list(sys.argv[1:] if argv is None else argv), prog("evaluate"), DESCRIPTION)
    check_paths(cfg)
    threads = set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    loaded = load_model(cfg.model_path, cfg.arch, cfg.init_channels, cfg.layers)  # type: ignore[arg-type]
    shape = print_cost(loaded)
    model = loaded.model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    names = None
    if cfg.inputs:
        batches, reference, has_target = tensor_batches(cfg.inputs, cfg.batch_size, device, loaded.spec)
        num_classes = loaded.spec.num_classes
    else:
        dataset = cfg.dataset or loaded.dataset or "cifar10"
        batches, info, names = dataset_batches(cfg, dataset, cfg.image_size or loaded.spec.image_size, device)
        reference, has_target, num_classes = None, True, info.num_classes
        spec = loaded.spec
        if (num_classes, info.in_channels) != (spec.num_classes, spec.in_channels):
            raise UserError(f"the network takes {spec.in_channels}-channel images of {spec.num_classes} classes, the "
                            f"{dataset} test set has {info.in_channels}-channel images of {num_classes}")
    batches = progress(batches, total=len(batches), desc="test", enabled=cfg.progress)
    try:
        result = evaluate(model, batches, num_classes, keep_logits=bool(cfg.dump_logits) or reference is not None,
                          amp=cfg.amp, amp_dtype=cfg.amp_dtype, channels_last=cfg.channels_last)
    except RuntimeError as exc:
        if not cfg.inputs:
            raise
        raise UserError(f"--inputs {cfg.inputs}: the network cannot take these images: {one_line(exc)[:200]}") from None
    if has_target:
        report(result, names, cfg.per_class, threads)
    else:
        print(f"inputs: {result.n} images ({result.images_per_s:.1f} images/s); no targets in {cfg.inputs}")
    if reference is not None:
        diff = float((result.logits - reference.float()).abs().max())
        print(f"max |logit - reference logit| = {diff:.3e}")
    if cfg.confusion:
        plot_confusion(result.confusion, Path(cfg.confusion), names)
        mark_output(cfg.confusion, "fairdarts-evaluate")
        print(f"confusion matrix: {cfg.confusion}")
    if cfg.dump_logits:
        save_checkpoint({"logits": result.logits, "targets": result.targets}, Path(cfg.dump_logits))
        mark_output(cfg.dump_logits, "fairdarts-evaluate")
        print(f"logits: {cfg.dump_logits}")
    if cfg.export == "onnx":
        export(cfg, loaded, shape)
    return 0


def export(cfg: EvalConfig, loaded: LoadedModel, shape: tuple[int, ...]) -> None:
    path = Path(_outputs(cfg)[-1][1])  # type: ignore[arg-type]
    model = loaded.model.cpu().float().eval()
    example = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(0))
    export_onnx(model, example, path)
    mark_output(path, "fairdarts-evaluate")
    diff = check_onnx(path, model, example)
    check = "onnxruntime not installed, not checked" if diff is None else f"onnxruntime max |logit diff| {diff:.2e}"
    print(f"ONNX: {path} ({check})")
    if diff is not None and diff > 1e-3:
        raise UserError(f"the ONNX model's logits differ from PyTorch's by {diff:.2e}")


if __name__ == "__main__":
    run_cli(main)
