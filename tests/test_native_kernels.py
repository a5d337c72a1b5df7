"""The native conv-chain kernels compute what PyTorch's layers compute, and step aside where they
do not apply.

Each chain ``[ReLU] -> depthwise conv -> 1x1 conv -> BatchNorm(batch statistics, no affine)`` is
checked against the same ``nn`` modules run by PyTorch, in float64 (relative error <= 1e-10)
and float32, for every geometry the search uses (3x3 / 5x5, dilation 1 / 2, stride 1 / 2), with
and without the ReLU read into the chain, with channel counts that take the vectorised kernels
and counts that take the scalar ones; forward output, running statistics, and the gradients of
input and both weights. The supernet-level equality (logits, gradients, trajectories against
``tests/reference_supernet.py``) is in test_fast_supernet.py.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairdarts.search_space import native
from fairdarts.search_space.native.chain import Stage, applicable, conv_bn_chain, runnable
from fairdarts.search_space.native.edge import edge_forward
from fairdarts.search_space.operations import DilConv, ReLUConvBN, SepConv

pytestmark = pytest.mark.usefixtures("one_thread")

needs_kernels = pytest.mark.skipif(native.library() is None, reason=f"no native kernels: {native.unavailable_reason()}")

# (kernel, stride, padding, dilation): sep_conv 3x3 / 5x5, dil_conv 3x3 / 5x5, each at stride 1 and 2
GEOMETRIES = [(3, 1, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (5, 1, 4, 2),
              (3, 2, 1, 1), (5, 2, 2, 1), (3, 2, 2, 2), (5, 2, 4, 2)]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / (scale if scale > 0 else 1.0)


def modules(c_in: int, c_out: int, geometry: tuple[int, int, int, int] | None, dtype: torch.dtype):
    torch.manual_seed(0)
    dw = None
    if geometry is not None:
        k, s, p, d = geometry
        dw = nn.Conv2d(c_in, c_in, k, s, p, d, groups=c_in, bias=False).to(dtype)
    pw = nn.Conv2d(c_in, c_out, 1, bias=False).to(dtype)
    bn = nn.BatchNorm2d(c_out, affine=False).to(dtype)
    return dw, pw, bn


def torch_chain(x, dw, pw, bn, relu: bool) -> torch.Tensor:
    h = F.relu(x) if relu else x
    return bn(pw(dw(h) if dw is not None else h))


def run_both(c_in: int, c_out: int, geometry, relu: bool, dtype: torch.dtype, px: int = 9, n: int = 3):
    """(native, torch) results: output, running mean/var, grads of x, dw weight, pw weight."""
    results = []
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(n, c_in, px, px, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    for use_native in (True, False):
        dw, pw, bn = modules(c_in, c_out, geometry, dtype)
        x = x0.clone().requires_grad_()
        y = conv_bn_chain(x, dw, pw, bn, relu) if use_native else torch_chain(x, dw, pw, bn, relu)
        assert y is not None
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        y.backward(gy)
        params = [pw.weight] if dw is None else [dw.weight, pw.weight]
        results.append([y.detach(), bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone(),
                         x.grad] + [p.grad for p in params])
    return results


@needs_kernels
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu-in"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}".format(*g))
@pytest.mark.parametrize("channels", [8, 6], ids=["vectorised", "scalar"])
def test_chain_equals_pytorch_float64(geometry, relu, channels) -> None:
    native_out, torch_out = run_both(channels, channels, geometry, relu, torch.float64)
    for a, b in zip(native_out, torch_out):
        assert a.shape == b.shape
        assert rel_err(a.double(), b.double()) <= 1e-10


@needs_kernels
@pytest.mark.parametrize("c_in,c_out", [(24, 8), (16, 16), (12, 4), (5, 3)])
@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu-in"])
def test_pointwise_chain_equals_pytorch(c_in, c_out, relu) -> None:
    """The preprocessing chain (ReLU -> 1x1 -> BN) at channel counts in and out of the vector width."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        native_out, torch_out = run_both(c_in, c_out, None, relu, dtype)
        for a, b in zip(native_out, torch_out):
            assert rel_err(a.double(), b.double()) <= tol


@needs_kernels
@pytest.mark.parametrize("geometry", [(3, 1, 1, 1), (5, 2, 4, 2)], ids=["sep3", "dil5-stride2"])
def test_chain_float32_close_to_pytorch(geometry) -> None:
    native_out, torch_out = run_both(16, 16, geometry, True, torch.float32, px=12, n=4)
    for a, b in zip(native_out, torch_out):
        assert rel_err(a.double(), b.double()) <= 1e-4


@needs_kernels
def test_ops_take_the_native_path_and_match_their_modules() -> None:
    """SepConv, DilConv and ReLUConvBN with the search's settings give what nn.Sequential gives."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for op in (SepConv(8, 8, 3, 1, 1, affine=False, leading_relu=False), DilConv(8, 8, 5, 2, 4, 2, affine=False),
               ReLUConvBN(8, 8, 1, 1, 0, affine=False)):
        op = op.double()
        assert applicable(x, op.stages())
        a = op(x)
        b = op.op(x)
        assert rel_err(a, b) <= 1e-10


@needs_kernels
def test_not_applicable_where_the_modules_differ() -> None:
    """Eval mode, affine BatchNorm, autocast, integer or half tensors and cumulative averages take
    the modules' own path."""
    x = torch.randn(2, 8, 6, 6)
    dw, pw, bn = modules(8, 8, (3, 1, 1, 1), torch.float32)
    bn.eval()
    assert conv_bn_chain(x, dw, pw, bn, relu=False) is None
    bn.train()
    assert applicable(x, [Stage(dw, pw, bn, False)])
    assert not applicable(x.half(), [Stage(dw, pw, bn, False)])
    assert not applicable(x.to("meta"), [Stage(dw, pw, bn, False)])  # any non-CPU device (CUDA): PyTorch's path
    assert not applicable(x, [Stage(dw, pw, nn.BatchNorm2d(8, affine=True), False)])
    assert not applicable(x, [Stage(dw, pw, nn.BatchNorm2d(8, affine=False, momentum=None), False)])
    assert not applicable(x, [Stage(dw, nn.Conv2d(8, 8, 1, bias=True), bn, False)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not applicable(x, [Stage(dw, pw, bn, False)])


@needs_kernels
def test_double_backward_goes_through_pytorch() -> None:
    """Under create_graph=True (``--hessian exact``) the gradients are themselves differentiable and
    their derivatives equal those of the plain modules."""
    outs = []
    for use_native in (True, False):
        dw, pw, bn = modules(4, 4, (3, 1, 2, 2), torch.float64)
        x = torch.randn(2, 4, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        y = conv_bn_chain(x, dw, pw, bn, True) if use_native else torch_chain(x, dw, pw, bn, True)
        g_w = torch.autograd.grad((y ** 3).sum(), [dw.weight, pw.weight], create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in g_w), [x, dw.weight])
        outs.append([*g_w, *second])
    for a, b in zip(*outs):
        assert rel_err(a, b) <= 1e-10


def test_switched_off_by_environment_runs_pytorch() -> None:
    """FAIRDARTS_NATIVE_KERNELS=0: no library, the reason says why, and the supernet still runs."""
    code = ("import os; os.environ['FAIRDARTS_NATIVE_KERNELS'] = '0'\n"
            "from fairdarts.search_space import native, Supernet, FAIRDARTS_PRIMITIVES\n"
            "import torch\n"
            "assert native.library() is None, 'loaded'\n"
            "print(native.unavailable_reason())\n"
            "m = Supernet(4, 10, 3, FAIRDARTS_PRIMITIVES)\n"
            "m(torch.randn(2, 3, 8, 8)).sum().backward()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "FAIRDARTS_NATIVE_KERNELS=0" in out.stdout


@needs_kernels
@pytest.mark.parametrize("n,px", [(5, 48), (7, 24)], ids=["image-per-chunk", "chunks-of-several"])
def test_chunked_batches_equal_pytorch(n, px) -> None:
    """Batches the vectorised path splits into chunks of images (one per chunk, or several with a
    remainder) give the same outputs, statistics and gradients as PyTorch."""
    native_out, torch_out = run_both(16, 16, (5, 1, 4, 2), True, torch.float64, px=px, n=n)
    for a, b in zip(native_out, torch_out):
        assert rel_err(a, b) <= 1e-10


def _second_order(model_seed: int, exact: bool):
    from fairdarts.search.architect import Architect, ArchObjective
    from fairdarts.search_space import FAIRDARTS_PRIMITIVES, Supernet

    torch.manual_seed(model_seed)
    model = Supernet(8, 10, 3, FAIRDARTS_PRIMITIVES, gate="sigmoid").double()
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_(0.0, 0.5)
    opt = torch.optim.SGD(model.weight_parameters(), 0.1, momentum=0.9)
    g = torch.Generator().manual_seed(5)
    train = (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (4,), generator=g))
    arch = (torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (4,), generator=g))
    architect = Architect(model, 3e-3, (0.9, 0.999), 1e-3, ArchObjective(10.0), unrolled=True,
                          hessian="exact" if exact else "finite_difference")
    grads, _ = architect.second_order_grads(train, arch, opt)
    return torch.cat([t.flatten() for t in grads])


@needs_kernels
@pytest.mark.parametrize("exact", [True, False], ids=["exact-hessian", "finite-difference"])
def test_second_order_hypergradient_equals_pytorch_path(exact, monkeypatch) -> None:
    """The DARTS hypergradient (exact double backprop through the edges' and chains'
    differentiable backward, or finite differences) with the kernels equals the one with
    PyTorch's kernels."""
    with_kernels = _second_order(0, exact)
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    try:
        without = _second_order(0, exact)
    finally:
        monkeypatch.undo()
        native.reset()
    assert rel_err(with_kernels, without) <= 1e-9


def test_textbook_supernet_never_takes_the_native_kernels(monkeypatch) -> None:
    """The benchmark's textbook pays what the official code pays: none of its ops runs a chain."""
    from benchmarks.textbook import TextbookSupernet
    from fairdarts.search_space import FAIRDARTS_PRIMITIVES
    from fairdarts.search_space.native import chain
    from fairdarts.search_space.operations import FactorizedReduce, NativeChains

    def refuse(*args, **kwargs):
        raise AssertionError("the textbook ran a native chain")

    monkeypatch.setattr(chain._Chains, "apply", refuse)
    model = TextbookSupernet(4, 10, 3, FAIRDARTS_PRIMITIVES)
    assert all(not m.native for m in model.modules() if isinstance(m, (NativeChains, FactorizedReduce)))
    model(torch.randn(2, 3, 8, 8)).sum().backward()


@needs_kernels
@pytest.mark.parametrize("geometry", [(3, 1, 1, 1), (5, 2, 4, 2), None], ids=["sep3", "dil5-stride2", "pointwise"])
@pytest.mark.parametrize("channels", [8, 6], ids=["vectorised", "scalar"])
def test_eval_mode_without_grad_uses_running_statistics(geometry, channels) -> None:
    """Validation (eval mode, no gradients) runs the chains on the running statistics: the same
    output as the modules, and the statistics and batch count stay as they were."""
    dw, pw, bn = modules(channels, channels, geometry, torch.float64)
    x = torch.randn(3, channels, 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    bn(pw(dw(x) if dw is not None else x))  # some running statistics
    bn.eval()
    before = [b.clone() for b in bn.buffers()]
    with torch.no_grad():
        assert runnable(x, bn)
        ours = conv_bn_chain(x, dw, pw, bn, relu=True)
        ref = torch_chain(x, dw, pw, bn, relu=True)
    assert ours is not None and rel_err(ours, ref) <= 1e-10
    assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers()))


def _chain_and_edge(dtype: torch.dtype, training: bool) -> list[torch.Tensor]:
    """One mixed edge on the kernels (a sep conv, a dil conv and one precomputed op, added to a
    node's running sum): its output, the running statistics, and in training the gradients of the
    input, the gates, the sum and every weight. 16 images of 8 px: several chunks of images."""
    torch.manual_seed(0)
    sep = SepConv(8, 8, 3, 1, 1, affine=False, leading_relu=False).to(dtype)
    dil = DilConv(8, 8, 5, 1, 4, 2, affine=False, leading_relu=False).to(dtype)
    sep.train(training), dil.train(training)
    g = torch.Generator().manual_seed(3)
    cl = torch.channels_last
    x = torch.randn(16, 8, 8, 8, generator=g, dtype=dtype).contiguous(memory_format=cl).requires_grad_(training)
    other = torch.randn(16, 8, 8, 8, generator=g, dtype=dtype).contiguous(memory_format=cl).requires_grad_(training)
    prev = torch.randn(16, 8, 8, 8, generator=g, dtype=dtype).contiguous(memory_format=cl).requires_grad_(training)
    gates = torch.rand(4, generator=g, dtype=dtype).requires_grad_(training)
    with torch.set_grad_enabled(training):
        out = edge_forward(prev, gates, x, [(0, sep.native_stages()[0]), (1, other), (3, dil.native_stages()[0])])
    stats = [b.clone() for m in (sep, dil) for b in m.buffers()]
    if not training:
        return [out, *stats]
    out.backward(torch.randn(out.shape, generator=g, dtype=dtype))
    weights = [p.grad for m in (sep, dil) for p in m.parameters()]
    return [out.detach(), *stats, x.grad, gates.grad, prev.grad, other.grad, *weights]


@needs_kernels
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_any_thread_count_gives_the_same_bits(dtype, training) -> None:
    """The kernels split a batch by its shapes, not by the thread count, and add the chunks'
    partial sums in order: two (or four) threads give exactly the results of one, in the
    forward pass, the batch statistics and every gradient."""
    if not native.openmp():
        pytest.skip("kernels built without OpenMP: one thread only")
    results = {}
    for threads in (1, 2, 4):
        torch.set_num_threads(threads)
        assert f"OpenMP, {threads} thread{'s' if threads > 1 else ''})" in native.status()
        results[threads] = _chain_and_edge(dtype, training)
    torch.set_num_threads(1)
    for threads in (2, 4):
        assert all(torch.equal(a, b) for a, b in zip(results[1], results[threads]))


@needs_kernels
@pytest.mark.parametrize("geometry", [(3, 1, 1, 1), None], ids=["sep3", "pointwise"])
@pytest.mark.parametrize("channels", [8, 6], ids=["vectorised", "scalar"])
def test_nan_in_the_input_reaches_the_output_as_in_pytorch(geometry, channels) -> None:
    """A ReLU keeps NaN (PyTorch's does): a diverged run's NaNs must reach its loss, where the
    non-finite check stops the run, instead of being zeroed at the first ReLU."""
    dw, pw, bn = modules(channels, channels, geometry, torch.float64)
    x = torch.randn(3, channels, 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x[1, 0, 4, 4] = float("nan")
    ours = conv_bn_chain(x, dw, pw, bn, relu=True)
    ref = torch_chain(x, dw, pw, bn, relu=True)
    assert ours is not None and torch.equal(torch.isnan(ours), torch.isnan(ref)) and torch.isnan(ref).any()


def _factorized_reduce_both(monkeypatch, c_in: int, c_out: int, px: int, relu: bool, training: bool):
    """(native, PyTorch) FactorizedReduce from the same weights and input: output, running statistics,
    batch count, and in training the gradients of the input and both convs."""
    import fairdarts.search_space.operations as ops
    torch.manual_seed(0)
    ref = ops.FactorizedReduce(c_in, c_out, affine=False, leading_relu=relu).double()
    x0 = torch.randn(3, c_in, px, px, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    results = []
    for use_native in (True, False):
        m = ops.FactorizedReduce(c_in, c_out, affine=False, leading_relu=relu).double()
        m.load_state_dict(ref.state_dict())
        m.train(training)
        if not use_native:
            monkeypatch.setattr(ops, "factorized_reduce", lambda *args: None)
        x = x0.clone().requires_grad_(training)
        with torch.set_grad_enabled(training):
            y = m(x)
        out = [y.detach(), *(b.double() for b in m.bn.buffers())]
        if training:
            y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=y.dtype))
            out += [x.grad, m.conv_1.weight.grad, m.conv_2.weight.grad]
        results.append(out)
        monkeypatch.undo()
    return results


@needs_kernels
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("px", [8, 7], ids=["even", "odd"])
@pytest.mark.parametrize("c_in,c_out,relu", [(8, 16, True), (6, 4, False)], ids=["vectorised-relu", "scalar-plain"])
def test_factorized_reduce_equals_its_pytorch_path(monkeypatch, c_in, c_out, relu, px, training) -> None:
    """The stride-2 skip as two chains: the same output, statistics (the batch counted once) and
    gradients as the module's two strided convs, concatenation and BatchNorm; odd sizes included."""
    ours, ref = _factorized_reduce_both(monkeypatch, c_in, c_out, px, relu, training)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert rel_err(a, b) <= 1e-10


@needs_kernels
@pytest.mark.parametrize("shape", [(2, 6, 1, 5), (2, 6, 5, 1), (2, 6, 1, 1)], ids=["row", "column", "pixel"])
def test_factorized_reduce_declines_a_one_pixel_side(shape, monkeypatch) -> None:
    """Found by the fuzz: with a side of one pixel the module's odd half reads an empty input and
    PyTorch raises, while the kernels returned a tensor. They decline it now: the same error either way."""
    from fairdarts.search_space.native.chain import factorized_reduce
    from fairdarts.search_space.operations import FactorizedReduce

    m = FactorizedReduce(6, 8, affine=False)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    assert factorized_reduce(x, m.conv_1.weight, m.conv_2.weight, m.bn, True) is None
    errors = []
    for kernels in (True, False):
        if not kernels:
            monkeypatch.setattr(native, "library", lambda: None)
        with pytest.raises(RuntimeError) as raised:
            m(x)
        errors.append(str(raised.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("px", [15, 9])
def test_noisy_skips_draw_the_same_noise_with_and_without_kernels_at_odd_sizes(px, monkeypatch) -> None:
    """Found by the fuzz: at odd sizes the stride-2 skip's PyTorch path returned NCHW where the
    kernels return channels-last, and a noisy skip downstream (``torch.randn_like``: noise in
    memory order) drew other noise, so the logits differed by ~0.2. Both give channels-last now."""
    from fairdarts.ablations.noise import NoisySkip
    from fairdarts.search_space import DARTS_PRIMITIVES, Supernet

    torch.manual_seed(0)
    model = Supernet(4, 10, 3, DARTS_PRIMITIVES, gate="softmax", steps=2, multiplier=2).double()
    model.map_skip_ops(lambda op, stride: NoisySkip("N") if stride == 1 else op)
    x = torch.randn(3, 3, px, px, dtype=torch.float64)
    logits = []
    for kernels in (True, False):
        if not kernels:
            monkeypatch.setattr(native, "library", lambda: None)
        torch.manual_seed(1)
        logits.append(model(x).detach())
    assert rel_err(logits[0], logits[1]) <= 1e-10
