"""Mobile genotypes: the layers of a network in search space S2, what its search derives.

S2 (Fair DARTS' MobileNetV2-like ImageNet space, reconstructed from FairNAS; see
:mod:`fairdarts.search_space.mobile`) is a chain of 19 searchable layers. A mobile genotype
names the op(s) each layer keeps, as JSON::

    {"form": "mobile", "layers": [["mb_k7_e3"], ["mb_k3_e3", "mb_k5_e6"], ...]}

19 lists, each one or more distinct op names; a layer that keeps several ops sums them.
``skip`` (the optional identity choice, residual layers only) turns a layer into the identity.

Derivation from the gated weights ``[19, n_ops]`` of a search:

* ``argmax``: the strongest op of every layer;
* ``threshold``: every op whose gate reaches ``op_threshold``, at least the strongest, strongest
  first; ``skip`` kept beside a real op is dropped (it adds nothing to the sum).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fairdarts.errors import UserError
from fairdarts.safe_io import short_repr

KERNELS: tuple[int, ...] = (3, 5, 7)
EXPANSIONS: tuple[int, ...] = (3, 6)
MB_OPS: tuple[str, ...] = tuple(f"mb_k{k}_e{e}" for k in KERNELS for e in EXPANSIONS)
SKIP = "skip"
MOBILE_OPS: tuple[str, ...] = (*MB_OPS, SKIP)
MOBILE_METHODS: tuple[str, ...] = ("argmax", "threshold")

#: (output channels, layers, stride of the first layer) of the six stages at width 1.
STAGES: tuple[tuple[int, int, int], ...] = ((32, 2, 2), (40, 4, 2), (80, 4, 2), (96, 4, 1), (192, 4, 2), (320, 1, 1))
STEM_CHANNELS, FIRST_BLOCK_CHANNELS, HEAD_CHANNELS = 32, 16, 1280
N_LAYERS = sum(n for _, n, _ in STAGES)


@dataclass(frozen=True)
class LayerSpec:
    """One searchable layer: channels in and out, stride, and whether it has the residual.

    The residual is a property of the layout (every layer but the first of a stage), so a
    narrow network whose rounded channels happen to match keeps the same 13 residual layers.
    """

    c_in: int
    c_out: int
    stride: int
    residual: bool


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding: nearest multiple of ``divisor``, never 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def scaled(channels: int, width_mult: float) -> int:
    """Channels at ``width_mult`` (width 1 keeps the published numbers)."""
    return channels if width_mult == 1.0 else make_divisible(channels * width_mult)


def layer_specs(width_mult: float = 1.0) -> tuple[LayerSpec, ...]:
    """The 19 searchable layers of the FairNAS layout; 13 of them have the residual at width 1."""
    specs, c_in = [], scaled(FIRST_BLOCK_CHANNELS, width_mult)
    for channels, repeats, stride in STAGES:
        c_out = scaled(channels, width_mult)
        for i in range(repeats):
            specs.append(LayerSpec(c_in, c_out, stride if i == 0 else 1, residual=i > 0))
            c_in = c_out
    return tuple(specs)


def parse_mb(name: str) -> tuple[int, int]:
    """(kernel, expansion) of an ``mb_k{k}_e{e}`` op."""
    k, e = name[len("mb_k"):].split("_e")
    return int(k), int(e)


@dataclass(frozen=True)
class MobileGenotype:
    """The op names kept by each of the 19 layers (validated by :func:`make_mobile_genotype`)."""

    layers: tuple[tuple[str, ...], ...]
    form: str = "mobile"

    def to_dict(self) -> dict[str, Any]:
        return {"form": "mobile", "layers": [list(ops) for ops in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def to_text(self) -> str:
        """One line for logs: layers separated by ``|``, several ops of a layer joined by ``+``."""
        return "mobile: " + " | ".join("+".join(ops) for ops in self.layers)

    def count_op(self, op: str) -> int:
        return sum(op in ops for ops in self.layers)


def make_mobile_genotype(layers: Any) -> MobileGenotype:
    """Validate raw lists (from JSON or a search) against the layout: one-line errors."""
    if not isinstance(layers, (list, tuple)) or len(layers) != N_LAYERS:
        got = f"{len(layers)} entries" if isinstance(layers, (list, tuple)) else type(layers).__name__
        raise UserError(f"mobile genotype 'layers' must be a list of {N_LAYERS} op lists, got {got}")
    specs = layer_specs()
    out = []
    for i, (ops, spec) in enumerate(zip(layers, specs), 1):
        if isinstance(ops, str):
            ops = [ops]
        if not isinstance(ops, (list, tuple)) or not 1 <= len(ops) <= len(MOBILE_OPS):
            raise UserError(f"mobile genotype layer {i} must be a non-empty list of at most {len(MOBILE_OPS)} "
                            f"distinct op names, got {short_repr(ops)}")
        for op in ops:
            if op not in MOBILE_OPS:
                close = difflib.get_close_matches(str(op), MOBILE_OPS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f"; known ops: {', '.join(MOBILE_OPS)}"
                raise UserError(f"mobile genotype layer {i} has unknown op {op!r}{hint}")
        if len(set(ops)) != len(ops):
            raise UserError(f"mobile genotype layer {i} names an op twice: {list(ops)}")
        if SKIP in ops and not spec.residual:
            raise UserError(f"mobile genotype layer {i} cannot keep 'skip': it changes the shape "
                            f"({spec.c_in} -> {spec.c_out} channels, stride {spec.stride})")
        out.append(tuple(ops))
    return MobileGenotype(tuple(out))


def mobile_genotype_from_dict(d: dict[str, Any]) -> MobileGenotype:
    unknown = set(d) - {"form", "layers", "source", "name", "note"}
    if unknown:
        raise UserError(f"mobile genotype JSON has unknown keys: {', '.join(sorted(unknown))}")
    if "layers" not in d:
        raise UserError("mobile genotype JSON is missing 'layers' (19 lists of op names)")
    return make_mobile_genotype(d["layers"])


def from_choice_string(text: str) -> MobileGenotype:
    """FairNAS' ``k7e3 k3e3 ...`` notation (19 choices) as a genotype."""
    return make_mobile_genotype([[f"mb_k{c[1]}_e{c[3]}"] for c in text.split()])


# ----- derivation ---------------------------------------------------------------------------
def derive_mobile(weights: Any, primitives: Sequence[str], method: str = "threshold",
                  op_threshold: float | None = None) -> MobileGenotype:
    """A mobile genotype from gated weights ``[19, len(primitives)]`` (see the module docstring).

    ``skip`` is never chosen on a layer without the residual (its gate is 0 there anyway).
    """
    W = np.asarray(weights, dtype=np.float64)
    if W.shape != (N_LAYERS, len(primitives)):
        raise UserError(f"mobile gate weights have shape {W.shape}; expected ({N_LAYERS}, {len(primitives)})")
    if method not in MOBILE_METHODS:
        raise UserError(f"unknown mobile parse method {method!r}; use one of {', '.join(MOBILE_METHODS)}")
    if method == "threshold" and (op_threshold is None or not 0.0 <= op_threshold <= 1.0):
        raise UserError(f"--op_threshold must be in [0, 1] for threshold, got {op_threshold}")
    layers = []
    for row, spec in zip(W, layer_specs()):
        allowed = [k for k, name in enumerate(primitives) if spec.residual or name != SKIP]
        order = sorted(allowed, key=lambda k: -row[k])  # stable: ties keep the primitives' order
        kept = [order[0]] if method == "argmax" else [order[0]] + [k for k in order[1:] if row[k] >= op_threshold]
        names = [primitives[k] for k in kept]
        if len(names) > 1 and SKIP in names:
            names.remove(SKIP)
        layers.append(names)
    return make_mobile_genotype(layers)
