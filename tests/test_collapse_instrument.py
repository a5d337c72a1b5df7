"""The collapse instrument: the architecture Hessian's eigenvalues against the dense matrix,
Lanczos' two ends of the spectrum, RobustDARTS' DARTS-ES rule on synthetic series, and real tiny
searches: instrument on vs off bit-identical, records kept through resume (also of a run from
before the instrument), the early stop and its message, and S2."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from fairdarts.ablations.cli import main as darts_main
from fairdarts.errors import UserError
from fairdarts.reproducibility import capture_rng_state
from fairdarts.search.architect import ArchObjective
from fairdarts.search.cli import main as search_main
from fairdarts.search.collapse import DartsES, EarlyStop, EigenHistory, EigenRecord
from fairdarts.search.hessian import EigenEstimate, architecture_eigenvalues, lanczos_extremes
from fairdarts.search.searcher import Searcher
from fairdarts.search_space import DARTS_PRIMITIVES, Supernet

pytestmark = pytest.mark.usefixtures("one_thread")
WD = 1e-3
LEGACY = Path(__file__).parent / "fixtures" / "legacy_runs"
TINY = ["--dataset", "synthetic", "--image_size", "8", "--subset", "32", "--batch_size", "8", "--init_channels", "4",
        "--layers", "3", "--device", "cpu", "--no-progress", "--max_steps_per_epoch", "1", "--report_freq", "1"]


# ----- the eigenvalue against the dense Hessian ---------------------------------------------------
def _batches(n: int, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(6, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (6,), generator=g))
            for _ in range(n)]


def dense_hessian(model: Supernet, batches, weight_decay: float, zero_one: float) -> torch.Tensor:
    """The same loss as a function of one flat alpha vector, differentiated twice by
    ``torch.autograd.functional.hessian`` (not by the instrument's code): mean cross entropy over
    the batches in training mode, buffers cloned, plus ``zero_one * L_01`` and ``wd/2 ||alpha||^2``."""
    names = ["alphas_normal", "alphas_reduce"]
    shapes = [a.shape for a in model.arch_parameters()]
    weights = {n: w.detach() for n, w in model.named_weight_parameters()}

    def loss(flat: torch.Tensor) -> torch.Tensor:
        parts = dict(zip(names, (p.reshape(s) for p, s in zip(flat.split([s.numel() for s in shapes]), shapes))))
        total = sum(F.cross_entropy(functional_call(model, {**weights, **parts,
                                                            **{n: b.clone() for n, b in model.named_buffers()}}, (x,)),
                                    y) for x, y in batches)
        l01 = -(torch.sigmoid(flat) - 0.5).pow(2).mean()
        return total / len(batches) + zero_one * l01 + weight_decay / 2 * flat.pow(2).sum()

    model.train()
    flat = torch.cat([a.detach().flatten() for a in model.arch_parameters()])
    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("gate,primitives,zero_one", [
    ("sigmoid", ("max_pool_3x3", "skip_connect", "sep_conv_3x3"), 0.0),
    ("sigmoid", ("max_pool_3x3", "skip_connect", "sep_conv_3x3"), 10.0),   # --hessian_zero_one
    ("softmax", DARTS_PRIMITIVES, 0.0)])
def test_eigenvalues_equal_the_dense_hessian_in_float64(gate, primitives, zero_one):
    torch.manual_seed(0)
    model = Supernet(4, 10, 3, primitives, gate=gate, steps=2, multiplier=2).double()
    with torch.no_grad():  # alphas away from their init, so the Hessian is not special
        for a in model.arch_parameters():
            a.normal_(0.0, 0.5)
    model.eval()  # the instrument must measure in training mode and give the mode back
    batches = _batches(2, torch.float64)
    before = {n: b.clone() for n, b in model.state_dict().items()}
    rng = capture_rng_state()

    n = sum(a.numel() for a in model.arch_parameters())
    objective = ArchObjective(zero_one, "l2")  # what the search measures with
    est = architecture_eigenvalues(model, batches, lambda *a: objective(*a)[0], WD, max_iters=n, tol=1e-13)

    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics included
    assert torch.equal(capture_rng_state()["torch"], rng["torch"])
    eig = torch.linalg.eigvalsh(dense_hessian(model, batches, WD, zero_one))
    assert est.converged
    assert est.largest == pytest.approx(float(eig[-1]), abs=1e-8)
    assert est.smallest == pytest.approx(float(eig[0]), abs=1e-8)
    magnitude = eig[eig.abs().argmax()]
    assert est.largest_magnitude == pytest.approx(float(magnitude), abs=1e-8)


def test_lanczos_reports_the_largest_algebraic_eigenvalue_not_the_largest_magnitude():
    """A spectrum whose largest-magnitude eigenvalue is negative: power iteration would report -3."""
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    values = torch.cat([torch.tensor([-3.0, 2.0], dtype=torch.float64), torch.linspace(-1, 1, 38).double()])
    h = q @ torch.diag(values) @ q.T
    est = lanczos_extremes(lambda v: h @ v, 40, 40, 1e-12)
    assert (est.largest, est.smallest, est.largest_magnitude) == pytest.approx((2.0, -3.0, -3.0), abs=1e-10)
    capped = lanczos_extremes(lambda v: h @ v, 40, 3, 1e-12)
    assert capped.iterations == 3 and not capped.converged and capped.residual_largest > 1e-12


# ----- DARTS-ES on synthetic series ----------------------------------------------------------------
def _first_stop(rule: DartsES, epochs: list[int], values: list[float]) -> EarlyStop | None:
    """Apply the rule after every record but the run's last epoch's, as the search does."""
    for k in range(1, len(epochs)):
        stop = rule.check(epochs[:k], values[:k])
        if stop is not None:
            return stop
    return None


def test_darts_es_stops_where_robustdarts_rule_does():
    """Records every 2 epochs, 1.0 up to epoch 28 and 3.0 from epoch 30: at epoch 30 the local
    average of the last 5 records is (4 * 1 + 3) / 5 = 1.4, four records earlier 1.0, and
    1.4 / 1.0 > 1.3; the genotype kept is the one of epoch 30 - 2 * (2 + 4) = 18."""
    epochs = list(range(0, 50, 2))
    values = [1.0 if e <= 28 else 3.0 for e in epochs]
    stop = _first_stop(DartsES(), epochs, values)
    assert stop is not None
    assert (stop.stopped_after, stop.genotype_epoch) == (30, 18)
    assert (stop.local_average, stop.previous_average, stop.ratio) == pytest.approx((1.4, 1.0, 1.4))
    assert "stops after epoch 30 and returns the genotype of epoch 18" in stop.describe(1.3, 4)


def test_darts_es_waits_for_its_start_epoch_and_needs_the_factor():
    epochs = list(range(0, 50, 2))
    # A jump at epoch 6 fires at epoch 12 from epoch 0 on, (1 + 4 * 3) / 5 over 1.0; with the start
    # epoch 10 the first check (epoch 22) compares flat averages of 3.0 and does not fire.
    early = [1.0 if e < 6 else 3.0 for e in epochs]
    stop = _first_stop(DartsES(start_epoch=0), epochs, early)
    assert (stop.stopped_after, stop.genotype_epoch, stop.ratio) == (12, 0, pytest.approx(2.6))
    assert _first_stop(DartsES(), epochs, early) is None
    # The first check designates epoch 10 and happens at epoch 22 (collapse_facts.md).
    rising = [1.0 if e < 22 else 10.0 for e in epochs]
    assert _first_stop(DartsES(), epochs, rising).genotype_epoch == 10
    slow = [1.0 + 0.01 * e for e in epochs]          # grows, but never by 30% over 4 records
    assert _first_stop(DartsES(), epochs, slow) is None
    assert DartsES().local_average([1.0, 2.0], 1) is None and DartsES().local_average([1.0, 2.0, 6.0], 2) == 3.0


def test_eigen_history_round_trips_and_old_checkpoints_have_none():
    record = EigenRecord.of(4, EigenEstimate(2.0, -3.0, 7, 1e-4, 1e-2, True), 2, 0.5)
    h = EigenHistory([record], EarlyStop(4, 0, 1.5, 3.0, 2.0))
    assert EigenHistory.from_state_dict(h.state_dict()) == h
    assert EigenHistory.from_state_dict(None) == EigenHistory()
    assert "largest magnitude -3.0000e+00" in record.describe()


# ----- real tiny searches ---------------------------------------------------------------------------
def _state(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def _assert_same(a, b, where: str = "") -> None:
    """Bit-identical nested checkpoint content."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


NOISY = [*TINY, "--noise_darts", "--unrolled"]  # DARTS ops, softmax gates, second order, noisy skips


class _Killed(Exception):
    """A run killed between two epochs (after its checkpoint)."""


def test_instrument_leaves_the_search_bit_identical_and_survives_resume(tmp_path, monkeypatch):
    """The noise ablation draws from the global RNG inside the measured forward passes, and the
    second-order step reads the BatchNorm buffers: both would show any leak."""
    on, off, resumed = tmp_path / "on", tmp_path / "off", tmp_path / "resumed"
    assert darts_main([*NOISY, "--epochs", "3", "--hessian_every", "1", "--save", str(on)]) == 0
    assert darts_main([*NOISY, "--epochs", "3", "--save", str(off)]) == 0
    a, b = _state(on), _state(off)
    assert [r["epoch"] for r in a["hessian"]["records"]] == [0, 1, 2] and b["hessian"]["records"] == []
    for key in ("model", "w_optimizer", "a_optimizer", "arch_batches", "rng", "alpha_history", "genotype", "epoch"):
        _assert_same(a[key], b[key], key)
    with np.load(on / "alpha_history.npz") as x, np.load(off / "alpha_history.npz") as y:
        assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)
    doc = json.loads((on / "hessian_eigen.json").read_text())
    assert [r["largest"] for r in doc["records"]] == [r["largest"] for r in a["hessian"]["records"]]
    assert (on / "plots" / "hessian_eigen.png").stat().st_size > 0
    assert "hessian eigenvalue" in (on / "log.txt").read_text()

    # Killed after epoch 1's checkpoint, then resumed: the records of the first two epochs are kept,
    # and every number is the uninterrupted run's.
    original = Searcher.end_of_epoch

    def killed_after_epoch_1(self, epoch, *args):
        genotype = original(self, epoch, *args)
        if epoch == 1:
            raise _Killed
        return genotype

    with monkeypatch.context() as m:
        m.setattr(Searcher, "end_of_epoch", killed_after_epoch_1)
        with pytest.raises(_Killed):
            darts_main([*NOISY, "--epochs", "3", "--hessian_every", "1", "--save", str(resumed)])
    assert [r["epoch"] for r in _state(resumed)["hessian"]["records"]] == [0, 1]
    assert darts_main(["--resume", str(resumed), "--hessian_every", "1"]) == 0
    c = _state(resumed)
    for key in ("model", "alpha_history", "rng"):
        _assert_same(a[key], c[key], key)
    ignore_time = [{k: v for k, v in r.items() if k != "seconds"} for r in c["hessian"]["records"]]
    assert ignore_time == [{k: v for k, v in r.items() if k != "seconds"} for r in a["hessian"]["records"]]


def test_a_run_from_before_the_instrument_resumes_with_it_switched_on(tmp_path):
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY / "search", run)
    expected = json.loads((LEGACY / "search_expected.json").read_text())
    assert "hessian" not in _state(run)
    assert search_main(["--resume", str(run), "--epochs", "2", "--device", "cpu", "--hessian_every", "1"]) == 0
    state = _state(run)
    assert [r["epoch"] for r in state["hessian"]["records"]] == [1]
    for name, values in expected["alphas"].items():  # the search is the one without the instrument
        torch.testing.assert_close(state["model"][name], torch.tensor(values), rtol=1e-4, atol=1e-4)


def test_early_stop_ends_the_search_with_the_designated_genotype(tmp_path):
    """A rule that fires at its first check (window 1, delta 1, any growth factor): after epoch 1,
    with the genotype of epoch 0; a resume with the rule on runs no further epoch."""
    run = tmp_path / "es"
    rule = ["--hessian_every", "1", "--early_stop_eigen", "--early_stop_window", "1", "--early_stop_delta", "1",
            "--early_stop_factor", "1e-9", "--early_stop_start", "0"]
    assert search_main([*TINY, "--epochs", "4", *rule, "--parse_method", "darts", "--save", str(run)]) == 0
    log = (run / "log.txt").read_text()
    assert "early stop (DARTS-ES)" in log
    assert "the search stops after epoch 1 and returns the genotype of epoch 0" in log
    assert _state(run)["epoch"] == 2
    assert json.loads((run / "genotype.json").read_text()) == json.loads((run / "genotypes/epoch_000.json").read_text())
    doc = json.loads((run / "hessian_eigen.json").read_text())
    assert doc["early_stop"]["genotype_epoch"] == 0 and doc["early_stop_rule"]["window"] == 1
    with np.load(run / "alpha_history.npz") as h:
        assert np.array_equal(np.load(run / "normal_weight.npy"), h["gated_normal"][0].astype(np.float32))
    assert search_main(["--resume", str(run), *rule]) == 0
    assert _state(run)["epoch"] == 2 and "epoch 2 lr" not in (run / "log.txt").read_text()


def test_early_stop_needs_the_records():
    with pytest.raises(UserError, match="--early_stop_eigen needs the eigenvalue records"):
        search_main([*TINY, "--early_stop_eigen"])


def test_s2_search_records_the_eigenvalue(tmp_path):
    run = tmp_path / "s2"
    s2 = ["--search_space", "mobile", "--dataset", "synthetic", "--image_size", "32", "--subset", "16",
          "--batch_size", "8", "--width_mult", "0.25", "--device", "cpu", "--no-progress", "--epochs", "1",
          "--max_steps_per_epoch", "1", "--hessian_every", "1", "--hessian_batches", "1", "--save", str(run)]
    assert search_main(s2) == 0
    (record,) = json.loads((run / "hessian_eigen.json").read_text())["records"]
    assert record["epoch"] == 0 and record["batches"] == 1 and np.isfinite(record["largest"])
