"""A seeded differential fuzz of the native kernels against PyTorch's (slow tier).

For every op that takes the native path (the conv chains of ``ReLUConvBN``, ``DilConv`` and
``SepConv``, the stride-2 skip, the 3x3 pools, a whole mixed edge with the skip's noise hook on)
and for float32 and float64, ``FAIRDARTS_FUZZ_CASES`` (default 200) random cases: batch 1-9,
channels 1-33, height and width 1-19, stride 1 and 2, the op's dilation, inputs NCHW,
channels-last, sliced or transposed, ``requires_grad`` on some inputs only, training and eval
mode (eval with and without gradients). Each case runs twice from the same module state and
input: with the kernels, and with them switched off (what ``FAIRDARTS_NATIVE_KERNELS=0`` gives);
output, running statistics and every gradient must agree within the dtype's tolerance, and where
PyTorch's path raises, the native path must raise the same error. Whole supernets at 9, 15 and
17 px follow. The largest errors per op and dtype are printed at the end of the module.

    python -m pytest tests/test_native_fuzz.py                    # 200 cases per op and dtype
    FAIRDARTS_FUZZ_CASES=20 FAIRDARTS_FUZZ_SEED=7 python -m pytest tests/test_native_fuzz.py
"""
from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from fairdarts.ablations.noise import NoisySkip
from fairdarts.search_space import DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES, Supernet, native
from fairdarts.search_space.native import chain, edge, pool
from fairdarts.search_space.native.pool import pool3x3
from fairdarts.search_space.operations import DilConv, FactorizedReduce, ReLUConvBN, SepConv
from fairdarts.search_space.supernet import EdgeSource, MixedOp

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(native.library() is None, reason=f"no native kernels: {native.unavailable_reason()}")]

CASES = int(os.environ.get("FAIRDARTS_FUZZ_CASES", "200"))
SEED = int(os.environ.get("FAIRDARTS_FUZZ_SEED", "25"))
#: Largest relative error (to the largest magnitude of PyTorch's tensor) allowed per dtype.
TOLERANCE = {torch.float32: 2e-4, torch.float64: 1e-10}
#: The same for whole supernets: one op's rounding compounds over three cells, and the batch
#: statistics of 1-3 images at 3-5 px amplify it.
SUPERNET_TOLERANCE = {torch.float32: 2e-2, torch.float64: 1e-8}
DTYPES = {"f32": torch.float32, "f64": torch.float64}
LAYOUTS = ("nchw", "channels_last", "sliced", "transposed")


@dataclass
class Tally:
    """What the cases of one op and dtype saw."""

    cases: int = 0
    native: int = 0
    raised: int = 0
    worst: dict[str, float] = field(default_factory=lambda: {"forward": 0.0, "backward": 0.0})


TALLIES: dict[tuple[str, str], Tally] = {}


@pytest.fixture(scope="module", autouse=True)
def report(request):
    """Print the largest errors per op and dtype after the module (they go into the issue's note)."""
    yield
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"native fuzz (seed {SEED}): op, dtype, cases, cases on the kernels, cases raising in both, "
             "max rel error forward, backward"]
    for (op, dtype), t in sorted(TALLIES.items()):
        lines.append(f"  {op:22s} {dtype}  {t.cases:4d} {t.native:4d} {t.raised:3d}  "
                     f"{t.worst['forward']:.2e}  {t.worst['backward']:.2e}")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if terminal is not None and capture is not None and TALLIES:
        with capture.global_and_fixture_disabled():  # shown with the summary, not as captured output
            terminal.write_line("\n".join(lines))


def rel_err(a: Tensor, b: Tensor, floor: float) -> float:
    """max |a - b| relative to the largest magnitude in ``b``, or to ``floor`` where ``b`` is
    smaller (a gradient that is zero up to rounding has no relative error of its own)."""
    assert a.shape == b.shape and a.dtype == b.dtype
    if not b.numel():
        return 0.0
    return (a - b).abs().max().item() / max(b.abs().max().item(), floor, 1e-300)


def errors(ours: list[Tensor], ref: list[Tensor]) -> list[float]:
    """Per tensor: its relative error, with a floor of a hundredth of the largest magnitude among
    ``ref`` (the 1x1 conv of one channel before a BatchNorm, which is scale-invariant, has a
    gradient of zero plus rounding: 1e-6 of the other gradients in float64, 1e-3 in float32; a
    wrong gradient still shows as an error of its own size over that floor)."""
    assert len(ours) == len(ref), "a different number of tensors"
    floor = 1e-2 * max((t.abs().max().item() for t in ref if t.is_floating_point() and t.numel()), default=0.0)
    return [rel_err(a.double(), b.double(), floor) if b.is_floating_point() else float(not torch.equal(a, b))
            for a, b in zip(ours, ref)]


# ----- random inputs and ops ---------------------------------------------------------------------


def make_input(seed: int, shape: tuple[int, int, int, int], layout: str, dtype: torch.dtype) -> Tensor:
    """The same values (for one seed) in one of four memory layouts; sliced and transposed ones
    are views that are not contiguous in any format."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    if layout == "sliced":
        return torch.randn(n, c, h + 2, 2 * w, generator=g, dtype=dtype)[:, :, 1:h + 1, ::2]
    if layout == "transposed":
        return torch.randn(n, c, w, h, generator=g, dtype=dtype).transpose(2, 3)
    x = torch.randn(shape, generator=g, dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


Build = Callable[[random.Random, int, int], nn.Module]  # (rng, channels, stride) -> module

OPS: dict[str, Build] = {
    "relu_conv_bn": lambda r, c, s: ReLUConvBN(c, r.randint(1, 33), 1, 1, 0, affine=False,
                                               leading_relu=r.random() < 0.5),
    "dil_conv_3x3": lambda r, c, s: DilConv(c, c, 3, s, 2, 2, affine=False, leading_relu=r.random() < 0.5),
    "dil_conv_5x5": lambda r, c, s: DilConv(c, c, 5, s, 4, 2, affine=False, leading_relu=r.random() < 0.5),
    "sep_conv_3x3": lambda r, c, s: SepConv(c, c, 3, s, 1, affine=False, leading_relu=r.random() < 0.5),
    "sep_conv_5x5": lambda r, c, s: SepConv(c, c, 5, s, 2, affine=False, leading_relu=r.random() < 0.5),
    "skip_connect_stride2": lambda r, c, s: FactorizedReduce(c, 2 * r.randint(1, 16), affine=False,
                                                             leading_relu=r.random() < 0.5),
    "max_pool_3x3": lambda r, c, s: nn.MaxPool2d(3, stride=s, padding=1),
    "avg_pool_3x3": lambda r, c, s: nn.AvgPool2d(3, stride=s, padding=1, count_include_pad=False),
}


def pooled(module: nn.Module, x: Tensor) -> Tensor:
    """A pool as the supernet runs it (:meth:`EdgeSource.pooled`): the kernels where they apply."""
    y = pool3x3(module, x)
    return module(x) if y is None else y


def randomise_state(module: nn.Module, rng: random.Random, seed: int) -> None:
    """Running statistics away from their initial values; ``requires_grad`` off on some weights."""
    g = torch.Generator().manual_seed(seed + 1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    for p in module.parameters():
        p.requires_grad_(rng.random() < 0.7)


@dataclass
class Case:
    """One drawn case: the op (its two copies are made from ``module``), its input and how it runs."""

    module: nn.Module
    run: Callable[[nn.Module, Tensor, Tensor | None], Tensor]
    shape: tuple[int, int, int, int]
    layout: str
    dtype: torch.dtype
    seed: int
    x_grad: bool
    mode: str  # train, eval (no gradients: the kernels' validation path), eval-grad (PyTorch's path)
    extra: Tensor | None = None  # the edge's gates


def draw_case(op: str, dtype: torch.dtype, rng: random.Random) -> Case:
    n, h, w, stride = rng.randint(1, 9), rng.randint(1, 19), rng.randint(1, 19), rng.choice((1, 2))
    # a stride-2 edge holds the stride-2 skip, which needs an even channel count
    c = 2 * rng.randint(1, 16) if op == "mixed_edge" and stride == 2 else rng.randint(1, 33)
    seed = rng.randrange(2 ** 31)
    if op == "mixed_edge":
        module, extra = mixed_edge(rng, c, stride, dtype, seed)
        run: Callable = run_edge
    else:
        torch.manual_seed(seed)
        module, extra = OPS[op](rng, c, stride).to(dtype), None
        run = (lambda m, x, _: pooled(m, x)) if "pool" in op else (lambda m, x, _: m(x))
    randomise_state(module, rng, seed)
    mode = rng.choice(("train", "train", "eval", "eval-grad"))
    return Case(module, run, (n, c, h, w), rng.choice(LAYOUTS), dtype, seed, rng.random() < 0.7, mode, extra)


def mixed_edge(rng: random.Random, c: int, stride: int, dtype: torch.dtype, seed: int) -> tuple[nn.Module, Tensor]:
    """A mixed edge of one of the two search spaces, its stride-1 skip a noisy one (the noise
    ablation's hook); and its gates."""
    primitives = rng.choice((FAIRDARTS_PRIMITIVES, DARTS_PRIMITIVES))
    torch.manual_seed(seed)
    module = MixedOp(c, stride, primitives).to(dtype)
    k = primitives.index("skip_connect")
    if stride == 1:
        module._ops[k] = NoisySkip(rng.choice(("N", "U")))
        module._ops[k].scale = rng.random()
    gates = torch.rand(len(primitives), generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return module, gates.requires_grad_(rng.random() < 0.7)


def run_edge(module: MixedOp, x: Tensor, gates: Tensor) -> Tensor:
    """The edge as a cell runs it: from a cell state, added to a node's running sum."""
    n, c, h, w = x.shape
    stride = 2 if any(isinstance(op, FactorizedReduce) for op in module._ops) else 1
    shape = (n, c, (h - 1) // stride + 1, (w - 1) // stride + 1)
    prev = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    return module(EdgeSource(x), None, gates, prev)


# ----- one case, both ways -----------------------------------------------------------------------


def run_once(case: Case, module: nn.Module, kernels: bool, monkeypatch) -> tuple[list[Tensor], list[Tensor]] | type:
    """(forward tensors: output and buffers, backward tensors: gradients) of one run, or the
    type of the exception it raised."""
    if not kernels:
        monkeypatch.setattr(native, "library", lambda: None)
    try:
        return _forward_backward(case, module)
    except (RuntimeError, ValueError) as exc:
        return type(exc)
    finally:
        monkeypatch.undo()


def _forward_backward(case: Case, module: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    x = make_input(case.seed, case.shape, case.layout, case.dtype).requires_grad_(case.x_grad)
    gates = None if case.extra is None else case.extra.detach().clone().requires_grad_(case.extra.requires_grad)
    module.train(case.mode == "train")
    torch.manual_seed(case.seed + 2)  # the noisy skip draws its noise here
    with torch.set_grad_enabled(case.mode != "eval"):
        y = case.run(module, x, gates)
    forward = [y.detach(), *(b.detach().clone() for b in module.buffers())]
    if not y.requires_grad:
        return forward, []
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(case.seed + 3), dtype=y.dtype))
    leaves = [x, *([] if gates is None else [gates]), *module.parameters()]
    return forward, [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves if t.requires_grad]


class Counting:
    """Counts the calls of the kernels' autograd functions (did a case run on the kernels?)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        for fn in (chain._Chains, pool._Pool, edge._Edge):
            monkeypatch.setattr(fn, "apply", self._counted(fn.apply))

    def _counted(self, apply: Callable) -> Callable:
        def counted(*args):
            self.calls += 1
            return apply(*args)
        return counted


def check_case(case: Case, tally: Tally, monkeypatch, tolerance: dict[torch.dtype, float] = TOLERANCE) -> None:
    """Run ``case`` with and without the kernels; assert they agree; note the errors in ``tally``."""
    with pytest.MonkeyPatch.context() as counting_patch:
        counter = Counting(counting_patch)
        ours = run_once(case, copy.deepcopy(case.module), True, monkeypatch)
        ran_native = counter.calls > 0
    ref = run_once(case, copy.deepcopy(case.module), False, monkeypatch)
    where = f"{case.shape} {case.layout} {case.mode} seed {case.seed}"
    tally.cases += 1
    tally.native += ran_native
    if isinstance(ref, type) or isinstance(ours, type):
        assert ours == ref, f"{where}: with the kernels {ours}, PyTorch's path {ref}"
        tally.raised += 1
        return
    tol = tolerance[case.dtype]
    for part, a_list, b_list in (("forward", ours[0], ref[0]), ("backward", ours[1], ref[1])):
        for i, err in enumerate(errors(a_list, b_list)):
            tally.worst[part] = max(tally.worst[part], err)
            assert err <= tol, f"{where}: {part} tensor {i}: error {err:.3e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", [*OPS, "mixed_edge"])
def test_native_op_equals_pytorch_on_random_cases(op: str, dtype: str, monkeypatch) -> None:
    rng = random.Random(f"{SEED}-{op}-{dtype}")
    tally = TALLIES.setdefault((op, dtype), Tally())
    for _ in range(CASES):
        check_case(draw_case(op, DTYPES[dtype], rng), tally, monkeypatch)
    assert tally.native >= CASES // 3, f"only {tally.native} of {CASES} cases ran on the kernels"


@pytest.mark.parametrize("dtype", DTYPES)
def test_whole_supernets_at_odd_sizes_equal_pytorch(dtype: str, monkeypatch) -> None:
    """Supernets (both search spaces and gates, some with the noisy skip) at 9, 15 and 17 px, batch
    1-3: logits, running statistics and every gradient in training, logits in eval mode."""
    rng = random.Random(f"{SEED}-supernet-{dtype}")
    tally = TALLIES.setdefault(("supernet", dtype), Tally())
    for px in (9, 15, 17):
        primitives = rng.choice((FAIRDARTS_PRIMITIVES, DARTS_PRIMITIVES))
        seed = rng.randrange(2 ** 31)
        torch.manual_seed(seed)
        model = Supernet(4, 10, 3, primitives, gate=rng.choice(("sigmoid", "softmax")), steps=2,
                         multiplier=2).to(DTYPES[dtype])
        if rng.random() < 0.5:
            model.map_skip_ops(lambda op, stride: NoisySkip("N") if stride == 1 else op)
        for mode in ("train", "eval"):
            case = Case(model, lambda m, x, _: m(x), (rng.randint(1, 3), 3, px, px), rng.choice(LAYOUTS),
                        DTYPES[dtype], seed, False, mode)
            check_case(case, tally, monkeypatch, SUPERNET_TOLERANCE)
    assert tally.native == tally.cases
