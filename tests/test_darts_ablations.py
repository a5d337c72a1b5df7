"""The darts/ ablations: noise on skip connections, random search, reweighted cells."""
from __future__ import annotations

import pytest
import torch

import fairdarts
from fairdarts.ablations.noise import NoisySkip, add_skip_noise, noise_scale, set_noise_scale
from fairdarts.ablations.random_search import random_search
from fairdarts.errors import UserError
from fairdarts.search_space import get_genotype
from fairdarts.search_space.operations import FactorizedReduce


@pytest.mark.parametrize("scheduler", ["cosine", "step"])
def test_noise_scale_decays_from_one_to_zero_then_stays_zero(scheduler: str) -> None:
    scales = [noise_scale(e, 30, scheduler) for e in range(40)]
    assert scales[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scales[:30], scales[1:30]))
    assert all(s == 0.0 for s in scales[30:])
    assert scales[15] == pytest.approx(0.5)  # both schedules cross 0.5 half-way


def test_cosine_and_step_differ() -> None:
    assert noise_scale(5, 30, "cosine") > noise_scale(5, 30, "step")


@pytest.mark.parametrize("noise_type", ["N", "U"])
def test_noisy_skip_is_random_in_training_and_identity_in_eval(noise_type: str) -> None:
    op = NoisySkip(noise_type)
    x = torch.randn(2, 3, 4, 4)
    op.train()
    a, b = op(x), op(x)
    assert not torch.equal(a, b) and not torch.equal(a, x)
    if noise_type == "U":
        noise = a - x
        torch.testing.assert_close(noise, noise.round(), atol=1e-5, rtol=0)  # integer-valued
        assert set(noise.round().unique().tolist()) <= {-3.0, -2.0, -1.0, 0.0, 1.0, 2.0}
    op.eval()
    assert torch.equal(op(x), x)
    op.train()
    op.scale = 0.0
    assert torch.equal(op(x), x)


@pytest.mark.parametrize("gate,primitives", [("softmax", "darts"), ("sigmoid", "fairdarts")])
def test_noise_goes_on_stride_one_skips_only(gate: str, primitives: str) -> None:
    net = fairdarts.build_supernet(gate, primitives, init_channels=4, layers=3)
    noisy = add_skip_noise(net, "N")
    strided = sum(isinstance(m, FactorizedReduce) for m in net.modules())
    # 3 layers: cells 1 and 2 are reductions; a reduction cell's 8 edges from its inputs have stride 2.
    assert len(noisy) == 14 + 2 * (14 - 8)
    assert strided >= 2 * 8
    set_noise_scale(noisy, 0.0)
    x = torch.randn(2, 3, 8, 8)
    net.train()
    torch.manual_seed(0)
    base = net(x)
    set_noise_scale(noisy, 1.0)
    torch.manual_seed(0)
    assert not torch.allclose(base, net(x))
    net.eval()
    set_noise_scale(noisy, 1.0)
    with torch.no_grad():
        a = net(x)
    set_noise_scale(noisy, 0.0)
    with torch.no_grad():
        torch.testing.assert_close(a, net(x))


def test_random_search_honours_skip_count_and_flops() -> None:
    kept = random_search(num_identity=2, num_arch=2, flops_threshold=10, seed=1, init_channels=8, layers=8,
                         log=lambda *_: None)
    assert len(kept) == 2
    for c in kept:
        assert c.genotype.count_op("skip_connect") == 2
        assert c.flops >= 10e6
        assert all(e.op != "none" for e in c.genotype.normal + c.genotype.reduce)
    assert kept[0].genotype != kept[1].genotype


def test_random_search_gives_up_clearly() -> None:
    with pytest.raises(UserError, match="found only 0 of 1"):
        random_search(num_identity=2, num_arch=1, flops_threshold=1e9, seed=0, max_tries=20,
                      init_channels=4, layers=5, log=lambda *_: None)


def test_published_reweight_genotypes_build_and_run() -> None:
    for name in ("DARTS_EXP1_RE1", "DARTS_EXP2_RE5"):
        net = fairdarts.build_network(name, 4, 5, 10, auxiliary=True, image_size=16)
        logits, aux = net(torch.randn(2, 3, 16, 16))
        assert logits.shape == (2, 10)
        weights = [e.weight for e in get_genotype(name).normal]
        assert net.cells[0]._edge_weights == weights


# ===== darts/train_search.py: the shared search with the ablations ============================
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from fairdarts.ablations.config import DartsSearchConfig  # noqa: E402
from fairdarts.ablations.reweight import reweight_edges, reweight_genotype  # noqa: E402
from fairdarts.ablations.searcher import DartsSearcher  # noqa: E402
from fairdarts.ablations.cli import main as darts_main  # noqa: E402
from fairdarts.search import cli as search_cli  # noqa: E402
from fairdarts.search_space import DARTS_PRIMITIVES, make_genotype, registered_names  # noqa: E402
from fairdarts.search_space.networks import DartsCell  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--image_size", "8", "--subset", "32", "--batch_size", "8",
        "--init_channels", "4", "--layers", "3", "--device", "cpu", "--report_freq", "1", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _run(module_or_script: list[str], args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    return subprocess.run([sys.executable, *module_or_script, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_darts_defaults_are_the_original_darts_ones() -> None:
    cfg = DartsSearchConfig()
    assert (cfg.gate, cfg.primitives, cfg.alpha_init, cfg.parse_method) == ("softmax", "darts", "randn", "darts")
    assert (cfg.batch_size, cfg.learning_rate, cfg.learning_rate_min) == (64, 0.025, 0.001)
    assert (cfg.arch_learning_rate, cfg.arch_beta1, cfg.arch_beta2, cfg.arch_weight_decay) == (3e-4, 0.5, 0.999, 1e-3)
    assert cfg.zero_one_weight == 0.0 and cfg.max_step == 30 and cfg.noise_type == "N"
    # the preset of the plain search says the same
    import yaml
    preset = yaml.safe_load((REPO / "configs/search_darts_first_order.yaml").read_text())
    for key, value in preset.items():
        assert getattr(cfg, key) == value, key


def test_none_is_never_derived_and_reweight_takes_the_gate_weights() -> None:
    rng = np.random.default_rng(0)
    w = rng.random((14, len(DARTS_PRIMITIVES)))
    w[:, DARTS_PRIMITIVES.index("none")] = 10.0  # 'none' strongest everywhere
    edges = reweight_edges(w, DARTS_PRIMITIVES)
    assert len(edges) == 8 and all(op != "none" for op, _, _ in edges)
    starts = [0, 2, 5, 9]
    for k, (op, src, weight) in enumerate(edges):
        assert weight == w[starts[k // 2] + src, DARTS_PRIMITIVES.index(op)]
    g = reweight_genotype(w, w, DARTS_PRIMITIVES)
    assert g.form == "darts-reweight"
    assert json.loads(g.to_json())["normal"][0][2] == edges[0][2]


def test_reweighted_cell_multiplies_each_op_by_its_weight() -> None:
    ops = ["sep_conv_3x3", "skip_connect", "max_pool_3x3", "dil_conv_3x3",
           "avg_pool_3x3", "sep_conv_5x5", "skip_connect", "dil_conv_5x5"]
    srcs = [0, 1, 0, 2, 3, 1, 4, 2]
    weights = [0.3, 1.7, 0.25, 0.9, 0.6, 0.1, 1.2, 0.45]
    g = make_genotype([[o, s, w] for o, s, w in zip(ops, srcs, weights)],
                      [[o, s, w] for o, s, w in zip(ops, srcs, weights)], [2, 3, 4, 5], [2, 3, 4, 5])
    torch.manual_seed(0)
    cell = DartsCell(g, 4, 4, 4, reduction=False, reduction_prev=False).eval()
    outputs: dict[int, torch.Tensor] = {}
    for k, op in enumerate(cell._ops):
        op.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o.detach().clone()))
    s0, s1 = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        out = cell(s0, s1, 0.0)
    nodes = out.split(4, dim=1)
    for i in range(4):
        expected = weights[2 * i] * outputs[2 * i] + weights[2 * i + 1] * outputs[2 * i + 1]
        torch.testing.assert_close(nodes[i], expected)
    # the same cell without weights (DARTS form) gives the unscaled sum
    plain = DartsCell(make_genotype([[o, s] for o, s in zip(ops, srcs)], [[o, s] for o, s in zip(ops, srcs)],
                                    [2, 3, 4, 5], [2, 3, 4, 5]), 4, 4, 4, False, False).eval()
    plain.load_state_dict(cell.state_dict())
    with torch.no_grad():
        node2 = plain(s0, s1, 0.0).split(4, dim=1)[0]
    torch.testing.assert_close(node2, outputs[0] + outputs[1])


@pytest.mark.parametrize("name", [n for n in registered_names() if n.startswith("DARTS_EXP")])
def test_every_published_darts_exp_genotype_builds_and_runs(name: str) -> None:
    g = get_genotype(name)
    assert g.form == "darts-reweight" and all(e.weight is not None for e in g.normal + g.reduce)
    net = fairdarts.build_network(name, 4, 5, 10, image_size=16).eval()
    with torch.no_grad():
        logits, _ = net(torch.randn(2, 3, 16, 16))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("gate,primitives", [("softmax", "darts"), ("sigmoid", "fairdarts")])
def test_searcher_sets_the_noise_scale_each_epoch(gate: str, primitives: str, tmp_path) -> None:
    scales: list[float] = []

    class Recording(DartsSearcher):
        def train_one_epoch(self, epoch, lr):
            stats = super().train_one_epoch(epoch, lr)
            scales.append(self.noisy_skips[0].scale)
            assert all(m.scale == scales[-1] for m in self.noisy_skips)
            return stats

    args = [*TINY, "--epochs", "3", "--max_steps_per_epoch", "1", "--noise_darts", "--noise_scheduler", "step",
            "--max_step", "2", "--gate", gate, "--primitives", primitives, "--save", str(tmp_path / "run")]
    assert search_cli.main(args, config_cls=DartsSearchConfig, searcher_cls=Recording) == 0
    assert scales == [pytest.approx(1.0), pytest.approx(0.5), 0.0]


def test_noise_run_resumes_exactly(tmp_path) -> None:
    """A run stopped after epoch 0 and resumed equals the uninterrupted run: the noise draws
    come from torch's global RNG, which the checkpoint captures."""
    args = [*TINY, "--epochs", "2", "--max_steps_per_epoch", "2", "--noise_darts", "--noise_type", "U",
            "--max_step", "4"]
    assert darts_main([*args, "--save", str(tmp_path / "ref")]) == 0

    class Crash(Exception):
        pass

    class Stopping(DartsSearcher):
        def end_of_epoch(self, epoch, *rest):
            genotype = super().end_of_epoch(epoch, *rest)
            raise Crash  # "killed" after the epoch-0 checkpoint
            return genotype  # noqa

    with pytest.raises(Crash):
        search_cli.main([*args, "--save", str(tmp_path / "cut")], config_cls=DartsSearchConfig,
                        searcher_cls=Stopping)
    assert darts_main(["--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    ref, cut = (np.load(tmp_path / r / "alpha_history.npz") for r in ("ref", "cut"))
    for key in ("raw_normal", "raw_reduce"):
        np.testing.assert_array_equal(ref[key], cut[key])
    assert (tmp_path / "ref/genotype.json").read_text() == (tmp_path / "cut/genotype.json").read_text()


def test_script_noise_run_writes_the_genotype(tmp_path) -> None:
    run = tmp_path / "noise"
    r = _run(["darts/train_search.py"], [*TINY, "--epochs", "2", "--max_steps_per_epoch", "2", "--noise_darts",
                                         "--noise_type", "N", "--noise_scheduler", "cosine", "--max_step", "30",
                                         "--reweight", "--save", str(run)])
    assert r.returncode == 0, r.stderr
    g = get_genotype(run / "genotype.json")
    assert g.form == "darts-reweight" and all(e.op != "none" for e in g.normal + g.reduce)
    log = (run / "log.txt").read_text()
    assert "epoch 0 noise scale 1.0000" in log
    assert f"epoch 1 noise scale {noise_scale(1, 30, 'cosine'):.4f}" in log
    assert (run / "checkpoint.pt").is_file() and (run / "genotypes/epoch_001.json").is_file()


def test_module_random_search_writes_kept_genotypes(tmp_path) -> None:
    run = tmp_path / "random"
    r = _run(["-m", "fairdarts.ablations.cli"], ["--random_search", "--num_identity", "1", "--num_arch", "2",
                                            "--flops_threshold", "300", "--seed", "3", *TINY,
                                            "--train_random_epochs", "1", "--max_steps_per_epoch", "1",
                                            "--save", str(run)])
    assert r.returncode == 0, r.stderr
    entries = json.loads((run / "random_genotypes.json").read_text())
    assert len(entries) == 2 and sorted(e["rank"] for e in entries) == [1, 2]
    for e in entries:
        g = get_genotype(run / "random" / f"{e['name']}.json")
        assert g.count_op("skip_connect") == 1 and e["flops"] >= 300e6
        cost = fairdarts.count_flops_params(fairdarts.build_network(g, 36, 20), (1, 3, 32, 32))
        assert cost.flops == e["flops"]
    text = (run / "random_genotypes.txt").read_text()
    assert text.count("Genotype(normal=") == 2 and "M FLOPs" in text


@pytest.mark.parametrize("args,message", [
    (["--noise_type", "X"], "noise_type"),
    (["--no_such_flag"], "unrecognized"),
    (["--reweight", "--parse_method", "threshold_sparse"], "--reweight needs --parse_method darts"),
    (["--random_search", "--num_identity", "2", "--num_arch", "1", "--flops_threshold", "5000",
      "--max_tries", "3"], "random search found only 0 of 1"),
])
def test_bad_input_exits_nonzero_with_one_line(args, message, tmp_path) -> None:
    r = _run(["darts/train_search.py"], [*args, "--save", str(tmp_path / "x")], timeout=120)
    err = r.stderr.strip()
    assert r.returncode != 0 and len(err.splitlines()) == 1 and message in err and "Traceback" not in err


def test_random_search_script_keeps_what_the_library_keeps(tmp_path) -> None:
    run = tmp_path / "random"
    r = _run(["darts/random_search.py"], ["--num_identity", "1", "--num_arch", "2", "--flops_threshold", "300",
                                          "--seed", "3", "--device", "cpu", "--save", str(run)])
    assert r.returncode == 0, r.stderr
    entries = json.loads((run / "random_genotypes.json").read_text())
    expected = random_search(num_identity=1, num_arch=2, flops_threshold=300, seed=3, log=lambda *_: None)
    assert [(e["flops"], e["params"], e["tries"]) for e in entries] == [(c.flops, c.params, c.tries) for c in expected]
    assert [get_genotype(run / "random" / f"{e['name']}.json") for e in entries] == [c.genotype for c in expected]
    assert "rank" not in entries[0] and (run / "config.yaml").is_file()


def test_darts_folder_never_shadows_an_installed_darts_package(tmp_path) -> None:
    """``darts/`` holds command scripts only: with another ``darts`` (PyPI's) installed, ``import
    darts`` from the repository root finds that one, and the scripts still run."""
    fake = tmp_path / "site" / "darts"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("ORIGIN = 'installed'\n")
    assert not (REPO / "darts" / "__init__.py").exists()
    env_path = os.pathsep.join([str(REPO), str(tmp_path / "site")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": env_path}
    probe = subprocess.run([sys.executable, "-c", "import darts; print(darts.ORIGIN)"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "installed", probe.stderr
    for script in ("darts/train_search.py", "darts/random_search.py"):
        r = subprocess.run([sys.executable, script, "--help"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and f"usage: {script}" in r.stdout, r.stderr


def test_candidate_training_checkpoints_and_ranks_as_the_old_loop(tmp_path) -> None:
    """The EpochRun-based candidate training gives the accuracies and ranks of the loop it
    replaced (numbers recorded from that loop), writes ``random/arch_XX/checkpoint.pt`` and
    resumes a candidate from its checkpoint to the same weights."""
    import dataclasses
    import logging

    from fairdarts.ablations.random_search import CANDIDATE_FORMAT, CandidateTraining, train_and_rank
    from fairdarts.checkpoint import load_checkpoint
    from fairdarts.config import resolve_config
    from fairdarts.distributed import init_distributed
    from fairdarts.search.searcher import build_data

    cfg = resolve_config(DartsSearchConfig, [*TINY, "--train_random_epochs", "2", "--max_steps_per_epoch", "2",
                                             "--seed", "5"], "x", "x")
    dist, logger = init_distributed("cpu"), logging.getLogger("test")
    data = build_data(cfg, dist)
    kept = random_search(num_identity=1, num_arch=3, flops_threshold=300, seed=5, log=lambda *_: None)
    ranking = train_and_rank(kept, cfg, data, tmp_path, dist, logger)
    assert [(r["name"], r["valid_acc"], r["rank"]) for r in ranking] == [
        ("arch_00", 6.25, 2), ("arch_01", 6.25, 3), ("arch_02", 43.75, 1)]  # the old _train/_accuracy loop
    state = load_checkpoint(tmp_path / "random/arch_02/checkpoint.pt", map_location="cpu")
    assert state["format"] == CANDIDATE_FORMAT and state["epoch"] == 2

    first = CandidateTraining(dataclasses.replace(cfg, train_random_epochs=1), kept[2].genotype, data,
                              tmp_path / "cut", dist, logger)
    first.run()
    resumed = CandidateTraining(cfg, kept[2].genotype, data, tmp_path / "cut", dist, logger)
    resumed.resume(tmp_path / "cut/checkpoint.pt")
    assert resumed.start_epoch == 1 and resumed.run() == 43.75
    for key, value in resumed.net.state_dict().items():
        assert torch.equal(value, state["state_dict"][key]), key
