"""Load a checkpoint into its network and measure it: top-1 / top-5, loss, per-class accuracy,
the confusion matrix, throughput.

Two layouts load (always through :func:`fairdarts.checkpoint.load_checkpoint`, weights_only):

* this project's retraining checkpoints (``format: fairdarts-train/1``): the genotype, network
  sizes and dataset are inside, nothing else is needed;
* the official ones, ``{'state_dict': ..., 'epoch', 'best_acc_top1'}`` (or a bare state dict):
  the genotype comes from ``arch`` or from ``fairdarts/best_models.yaml`` when the file name is
  listed there; the class count, input channels, auxiliary head and network family are read off
  the weights, the channel and layer counts from the flags, the manifest, or 36 / 20.

Every field read is checked first (:mod:`fairdarts.checkpoint_schema`: sizes in range, every
weight finite); a state dict that does not fit the genotype fails with one line naming the
first keys that differ.
"""
from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from fairdarts.checkpoint import TRAIN_FORMAT, load_checkpoint
from fairdarts.checkpoint_schema import NETWORK, OFFICIAL_MODEL, PROJECT_MODEL, Key, Record, check_checkpoint
from fairdarts.errors import UserError, one_line
from fairdarts.metrics import autocast, topk_correct
from fairdarts.run_dir import atomic_write_bytes
from fairdarts.safe_io import load_yaml, read_text_limited
from fairdarts.search_space import (
    Genotype, MobileGenotype, NetworkSpec, build_network, genotype_from_dict, get_genotype,
)
from fairdarts.search_space.cost import network_cost

MANIFEST = Path(__file__).resolve().parents[1] / "best_models.yaml"  # package data: works without the repository
OFFICIAL_DEFAULT_SIZES = {"init_channels": 36, "layers": 20}


@dataclass
class LoadedModel:
    model: nn.Module
    spec: NetworkSpec               # the genotype and the sizes the network was built with
    dataset: str | None             # the dataset a project checkpoint was trained on
    source: str                     # "fairdarts" or "official"

    @property
    def genotype(self) -> Genotype | MobileGenotype:
        return self.spec.genotype

    @property
    def meta(self) -> dict[str, Any]:
        """The network record a retraining checkpoint stores (:meth:`NetworkSpec.to_dict`)."""
        return self.spec.to_dict()


# ----- manifest -----------------------------------------------------------------------------
def read_manifest(path: Path = MANIFEST) -> dict[str, dict[str, Any]]:
    """The published checkpoints by file name (empty when the manifest is absent)."""
    if not path.is_file():
        return {}
    try:
        data = load_yaml(read_text_limited(path, "manifest"))
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {one_line(exc)}") from None
    models = data.get("models", {}) if isinstance(data, dict) else None
    if not isinstance(models, dict):
        raise UserError(f"{path}: expected a 'models:' mapping of file name to entry")
    return models


def missing_file_hint(path: Path, manifest: dict[str, dict[str, Any]]) -> str | None:
    """One line on how to get a published checkpoint that is not on disk."""
    if path.name not in manifest:
        return None
    return (f"{path} is not here: it is a published checkpoint of the official repository; fetch it with "
            f"`python scripts/download_best_models.py {path.name}` (see best_model/README.md)")


# ----- loading ------------------------------------------------------------------------------
def state_dict_of(ckpt: dict[str, Any], path: Path) -> dict[str, Tensor]:
    """The weights of an official-layout file (under ``state_dict``, or the bare state dict),
    checked by :data:`OFFICIAL_MODEL`."""
    if "state_dict" in ckpt:
        check_checkpoint(ckpt, OFFICIAL_MODEL, str(path))
        return ckpt["state_dict"]
    if ckpt and all(isinstance(v, Tensor) for v in ckpt.values()):
        check_checkpoint({"state_dict": ckpt}, OFFICIAL_MODEL, f"{path} (a bare state dict)")
        return ckpt
    raise UserError(f"{path} holds no 'state_dict' (keys: {', '.join(sorted(map(str, ckpt))[:6])})")


def describe_mismatch(model: nn.Module, state: dict[str, Tensor], limit: int = 3) -> str | None:
    """``None`` when ``state`` loads strictly, else the first missing / unexpected / reshaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape (file vs network)", shapes)):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            parts.append(f"{label}: {', '.join(keys[:limit])}{more}")
    return "; ".join(parts) or None


def _official_spec(genotype: Genotype | MobileGenotype, state: dict[str, Tensor],
                   sizes: dict[str, Any]) -> NetworkSpec:
    """Sizes read off the weights themselves, plus the channel/layer counts given."""
    imagenet = "stem0.0.weight" in state
    stem = state.get("stem0.0.weight" if imagenet else "stem.0.weight")
    classifier = state.get("classifier.weight")
    if stem is None or classifier is None or stem.dim() != 4 or classifier.dim() != 2:
        raise UserError("the state dict has no stem / classifier weights: not a DARTS-family network checkpoint")
    meta = {"init_channels": sizes["init_channels"], "layers": sizes["layers"],
            "num_classes": int(classifier.shape[0]), "in_channels": int(stem.shape[1]),
            "image_size": sizes.get("image_size") or (224 if imagenet else 32),
            "auxiliary": any(k.startswith("auxiliary_head.") for k in state), "imagenet_net": imagenet}
    check_checkpoint({"network": meta}, Record((Key("network", NETWORK),)), "the state dict's shapes")
    return NetworkSpec.from_dict(genotype, meta)


def _project_spec(ckpt: dict[str, Any], path: Path, arch: str | None, init_channels: int | None,
                  layers: int | None) -> NetworkSpec:
    """A retraining checkpoint's own genotype and network record; ``arch`` and the sizes given override them."""
    genotype = get_genotype(arch) if arch else genotype_from_dict(ckpt["genotype"])
    try:
        spec = NetworkSpec.from_dict(genotype, ckpt["network"])
    except KeyError as exc:
        raise UserError(f"{path}: field 'network.{exc.args[0]}' is missing") from None
    _check_fits_weights(spec, ckpt["state_dict"], path)
    given = {k: v for k, v in (("init_channels", init_channels), ("layers", layers)) if v is not None}
    return dataclasses.replace(spec, **given)


def _check_fits_weights(spec: NetworkSpec, state: dict[str, Tensor], path: Path) -> None:
    """Refuse, before building it, a cell network with more parameters than the file holds values:
    each size of the record is in range, yet together they could describe a network too large
    to build. The parameters are counted without building (:func:`network_cost`)."""
    if spec.mobile:
        return  # a mobile network's only size, width_mult, is bounded by the schema
    cost = network_cost(spec.genotype, spec.init_channels, spec.layers, spec.num_classes, spec.auxiliary,
                        "imagenet" if spec.imagenet else "cifar10", spec.in_channels, spec.image_size)
    held = sum(t.numel() for t in state.values())
    if cost.params > held:
        raise UserError(f"{path}: field 'network' describes a network of {cost.params} parameters "
                        f"(init_channels {spec.init_channels}, layers {spec.layers}), more than the {held} values "
                        "its state_dict holds; the file is damaged or was not written by train.py")


def load_model(path: str | Path, arch: str | None = None, init_channels: int | None = None,
               layers: int | None = None, manifest: dict[str, dict[str, Any]] | None = None) -> LoadedModel:
    """The network of a checkpoint, weights loaded strictly, in eval mode on the CPU."""
    path = Path(path)
    manifest = read_manifest() if manifest is None else manifest
    if not path.exists() and (hint := missing_file_hint(path, manifest)):
        raise UserError(hint)
    ckpt = load_checkpoint(path, map_location="cpu")
    project = ckpt.get("format") == TRAIN_FORMAT
    if project:
        check_checkpoint(ckpt, PROJECT_MODEL, str(path))
    state = ckpt["state_dict"] if project else state_dict_of(ckpt, path)
    if project:
        spec = _project_spec(ckpt, path, arch, init_channels, layers)
        dataset, source = ckpt.get("dataset", {}).get("name"), "fairdarts"
    else:
        entry = manifest.get(path.name, {})
        genotype_spec = arch or entry.get("arch")
        if genotype_spec is None:
            raise UserError(f"{path} is an official-layout checkpoint without a genotype: pass --arch "
                            "(a name, genotype JSON, Genotype(...) text or search run folder)")
        sizes = {k: v if v is not None else entry.get(k, OFFICIAL_DEFAULT_SIZES[k])
                 for k, v in (("init_channels", init_channels), ("layers", layers))}
        spec = _official_spec(get_genotype(genotype_spec), state, sizes)
        dataset, source = entry.get("dataset"), "official"
    model = build_network(spec)
    mismatch = describe_mismatch(model, state)
    if mismatch:
        raise UserError(f"{path} does not fit {_arch_label(arch)} with init_channels={spec.init_channels} "
                        f"layers={spec.layers}: {mismatch}")
    model.load_state_dict(state, strict=True)
    return LoadedModel(model.eval(), spec, dataset, source)


def _arch_label(arch: str | None) -> str:
    return f"--arch {arch}" if arch else "the checkpoint's genotype"


# ----- measuring ----------------------------------------------------------------------------
@dataclass
class EvalResult:
    loss: float
    top1: float
    top5: float
    n: int
    seconds: float
    confusion: Tensor = field(repr=False)     # [true, predicted] counts
    logits: Tensor | None = field(default=None, repr=False)
    targets: Tensor | None = field(default=None, repr=False)

    @property
    def images_per_s(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else float("nan")

    @property
    def per_class(self) -> Tensor:
        """Top-1 accuracy (%) of each true class (NaN for classes absent from the test set)."""
        totals = self.confusion.sum(1).double()
        return 100.0 * self.confusion.diag().double() / totals


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_classes: int,
             max_steps: int | None = None, keep_logits: bool = False, amp: bool = False,
             amp_dtype: str = "bf16", channels_last: bool = False) -> EvalResult:
    """One pass in eval mode; the clock covers the forward passes and the batch transfers."""
    model.eval()
    device = next(model.parameters()).device
    loss = torch.zeros((), dtype=torch.float64, device=device)
    c1 = torch.zeros((), dtype=torch.long, device=device)
    c5 = torch.zeros((), dtype=torch.long, device=device)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    kept: list[tuple[Tensor, Tensor]] = []
    n = 0
    start = time.perf_counter()
    for k, (x, y) in enumerate(batches):
        if max_steps is not None and k >= max_steps:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp, amp_dtype):
            logits, _ = model(x)
        logits = logits.float()
        loss += F.cross_entropy(logits, y, reduction="sum").double()
        h1, h5 = topk_correct(logits, y)
        c1 += h1
        c5 += h5
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes * num_classes)
        n += len(y)
        if keep_logits:
            kept.append((logits.cpu(), y.cpu()))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if n == 0:
        raise UserError("the test set is empty: nothing to evaluate")
    logits_all = torch.cat([a for a, _ in kept]) if kept else None
    targets_all = torch.cat([b for _, b in kept]) if kept else None
    return EvalResult(float(loss) / n, 100.0 * int(c1) / n, 100.0 * int(c5) / n, n, seconds,
                      confusion.view(num_classes, num_classes).cpu(), logits_all, targets_all)


def plot_confusion(confusion: Tensor, path: Path, class_names: list[str] | None = None) -> None:
    """Row-normalised confusion matrix as a PNG (a Figure object: nothing lingers in pyplot)."""
    from matplotlib.figure import Figure

    k = confusion.shape[0]
    rates = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    fig = Figure(figsize=(2 + 0.45 * k, 1.5 + 0.45 * k))
    ax = fig.add_subplot()
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    names = class_names or [str(i) for i in range(k)]
    ax.set_xticks(range(k), names, rotation=90 if k > 10 else 0)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 0.5 else "black")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    atomic_write_bytes(path, buffer.getvalue())
