"""Checkpoints checked field by field (fairdarts.checkpoint_schema), and the schema fuzz.

Real checkpoints of tiny runs are loaded through the paths the commands use
(``EpochRun.load_state_dict`` for ``--resume``, ``load_model`` for ``evaluate.py``) with every
field of their schema replaced, in turn, by a wrong type, a negative, a huge value and NaN: each
must be refused with one line naming that field. The command lines themselves (the hang cases
among them) are run in tests/faults/test_checkpoint_cli.py.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fairdarts.checkpoint import load_checkpoint
from fairdarts.checkpoint_schema import (
    OFFICIAL_MODEL, PROJECT_MODEL, SEARCH, TRAIN, AlphaHistoryRule, Maybe, OptimizerState, Real, Record,
    Rule, Text, Weights,
)
from fairdarts.distributed import DistContext
from fairdarts.errors import UserError
from fairdarts.evaluation.evaluator import load_model
from fairdarts.resume import resume_config
from fairdarts.run_config import RESUME_OVERRIDABLE as RUN_OVERRIDABLE
from fairdarts.run_dir import setup_logger
from fairdarts.search.cli import main as search_main
from fairdarts.search.config import RESUME_OVERRIDABLE as SEARCH_OVERRIDABLE, SearchConfig
from fairdarts.search.searcher import Searcher
from fairdarts.search_space import get_genotype
from fairdarts.train.cli import main as train_main
from fairdarts.train.config import TrainConfig
from fairdarts.train.trainer import Trainer

TINY = ["--dataset", "synthetic", "--image_size", "8", "--batch_size", "8", "--device", "cpu", "--report_freq", "100",
        "--seed", "1", "--no-progress", "--max_steps_per_epoch", "2", "--threads", "1"]
SEARCH_ARGS = [*TINY, "--subset", "32", "--init_channels", "2", "--layers", "3",
               "--primitives", "max_pool_3x3,skip_connect,sep_conv_3x3"]
TRAIN_ARGS = [*TINY, "--subset", "16", "--test_subset", "8", "--init_channels", "4", "--layers", "3",
              "--arch", "FairDARTS_a", "--drop_path_prob", "0.2"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished one-epoch search and retraining, made once for the module (never modified)."""
    root = tmp_path_factory.mktemp("runs")
    assert search_main([*SEARCH_ARGS, "--epochs", "1", "--save", str(root / "search")]) == 0
    assert train_main([*TRAIN_ARGS, "--epochs", "1", "--save", str(root / "train")]) == 0
    return {"search": root / "search", "train": root / "train"}


def _run_of(kind: str, run: Path) -> Searcher | Trainer:
    """The run object ``--resume`` would build for ``run`` (resumed to 2 epochs), nothing loaded yet."""
    dist = DistContext(0, 1, 0, torch.device("cpu"))
    logger = setup_logger(None, True)
    if kind == "search":
        cfg, _ = resume_config(SearchConfig, str(run), ["--epochs", "2"], SEARCH_OVERRIDABLE, "p", "d", "search")
        return Searcher(cfg, run, dist, logger)
    cfg, _ = resume_config(TrainConfig, str(run), ["--epochs", "2"], RUN_OVERRIDABLE, "p", "d", "training")
    cfg = cfg.resolved()
    return Trainer(cfg, get_genotype(cfg.arch), run, dist, logger)


# ----- the fuzz -----------------------------------------------------------------------------
def _leaf(rule: Rule) -> Rule:
    return _leaf(rule.rule) if isinstance(rule, Maybe) else rule


def mutations(rule: Rule) -> dict[str, Any]:
    """A wrong type, a negative, a huge value (of the rule's own type for numbers) and NaN, as the
    value of a field of ``rule``."""
    leaf = _leaf(rule)
    return {"wrong type": 7 if isinstance(leaf, Text) else "x", "negative": -4,
            "huge": 1e300 if isinstance(leaf, Real) else 10**12, "nan": float("nan")}


def accepts(rule: Rule, mutation: str) -> bool:
    """The mutations a field may legitimately take: a negative number where the rule allows one
    (a cached Gaussian draw)."""
    leaf = _leaf(rule)
    return mutation == "negative" and isinstance(leaf, Real) and leaf.low < 0


def _set(state: dict, path: str, value: Any) -> dict:
    state = copy.deepcopy(state)
    *parents, last = path.split(".")
    node = state
    for key in parents:
        node = node[key]
    node[last] = value
    return state


def _get(state: dict, path: str) -> Any:
    for key in path.split("."):
        state = state[key]
    return state


def _with_nan(value: Any) -> Any:
    """``value`` with one floating-point element set to NaN (in its first floating tensor); for
    ``None`` (best weights that are the checkpoint's own), weights holding one NaN."""
    if value is None:
        return {"classifier.weight": torch.tensor([float("nan")])}
    value = copy.deepcopy(value)
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple)) else [node]
        for item in items:
            if isinstance(item, torch.Tensor) and item.is_floating_point() and item.numel():
                item.view(-1)[0] = float("nan")
                return value
            if isinstance(item, (dict, list, tuple)):
                stack.append(item)
    raise AssertionError("no floating-point tensor to poison")


def cases(schema: Record) -> list[tuple[str, str, Any]]:
    """(field, mutation, value) for every field of ``schema``: the four mutations, and NaN inside
    the tensors of the fields that hold some."""
    out = []
    for path, rule in schema.fields():
        out += [(path, name, value) for name, value in mutations(rule).items()]
        if isinstance(_leaf(rule), (Weights, OptimizerState, AlphaHistoryRule)):
            out.append((path, "nan inside", _with_nan))
    return out


def _expect_refused(load: Callable[[dict], Any], state: dict, path: str, mutation: str, value: Any,
                    rule: Rule | None) -> None:
    bad = _set(state, path, value(_get(state, path)) if callable(value) else value)
    if rule is not None and accepts(rule, mutation):
        load(bad)
        return
    with pytest.raises(UserError) as exc:
        load(bad)
        pytest.fail(f"field {path} set by mutation {mutation!r} was accepted")
    message = str(exc.value)
    assert "\n" not in message and f"field '{path}" in message, (path, mutation, message)


SCHEMA_RULES = {id(s): dict(s.fields()) for s in (SEARCH, TRAIN, PROJECT_MODEL, OFFICIAL_MODEL)}


@pytest.mark.parametrize("kind,schema", [("search", SEARCH), ("train", TRAIN)])
def test_every_field_of_a_resumed_checkpoint_is_checked(runs, kind, schema):
    run = _run_of(kind, runs[kind])
    state = load_checkpoint(runs[kind] / "checkpoint.pt")
    run.load_state_dict(copy.deepcopy(state))  # the unchanged checkpoint loads
    rules = SCHEMA_RULES[id(schema)]
    for path, mutation, value in cases(schema):
        _expect_refused(run.load_state_dict, state, path, mutation, value, rules[path])


def test_every_field_evaluate_reads_is_checked(runs, tmp_path):
    state = load_checkpoint(runs["train"] / "model_best.pt")
    path = tmp_path / "m.pt"

    def load(s: dict) -> None:
        torch.save(s, path)
        load_model(path, manifest={})

    load(state)
    rules = SCHEMA_RULES[id(PROJECT_MODEL)]
    for field, mutation, value in cases(PROJECT_MODEL):
        _expect_refused(load, state, field, mutation, value, rules[field])
    official = {"state_dict": state["state_dict"], "epoch": 3}
    for field, mutation, value in cases(OFFICIAL_MODEL):
        _expect_refused(lambda s: (torch.save(s, path), load_model(path, "FairDARTS_a", 4, 3, manifest={})),
                        official, field, mutation, value, None)


# ----- single cases -------------------------------------------------------------------------
def test_epoch_beyond_the_runs_epochs_and_history_of_another_length_are_named(runs):
    run = _run_of("search", runs["search"])
    state = load_checkpoint(runs["search"] / "checkpoint.pt")
    with pytest.raises(UserError, match=r"field 'epoch' must be an integer in 0\.\.2 \(the run's --epochs\), got 3"):
        run.load_state_dict(_set(state, "epoch", 3))
    with pytest.raises(UserError, match=r"field 'alpha_history.epochs' must list the epochs done"):
        run.load_state_dict(_set(state, "alpha_history.epochs", [0, 1]))
    raw = state["alpha_history"]["raw"]["normal"]
    with pytest.raises(UserError, match=r"field 'alpha_history.raw.normal' must be a float tensor of shape"):
        run.load_state_dict(_set(state, "alpha_history.raw.normal", raw[:, :5]))
    with pytest.raises(UserError, match=r"field 'rng.torch' must be a uint8 tensor of 5056 bytes"):
        run.load_state_dict(_set(state, "rng.torch", torch.zeros(7, dtype=torch.uint8)))


def test_optimizer_buffers_of_another_shape_are_refused_at_load(runs):
    """torch loads them, and fails only at the first step, deep in the resumed run."""
    run = _run_of("search", runs["search"])
    state = load_checkpoint(runs["search"] / "checkpoint.pt")
    for name, buffer in (("w_optimizer", "momentum_buffer"), ("a_optimizer", "exp_avg")):
        bad = copy.deepcopy(state)
        next(iter(bad[name]["state"].values()))[buffer] = torch.zeros(3)
        with pytest.raises(UserError, match=rf"does not match this search's supernet: {name}: a '{buffer}' buffer "
                                            r"has shape \[3\], its parameter \["):
            run.load_state_dict(bad)


def test_a_network_record_larger_than_its_weights_is_refused_before_building(runs, tmp_path):
    state = load_checkpoint(runs["train"] / "model_best.pt")
    path = tmp_path / "m.pt"
    torch.save(_set(state, "network.init_channels", 1024), path)  # in range, but 1024 channels: ~10^8 weights
    with pytest.raises(UserError, match=r"field 'network' describes a network of \d+ parameters"):
        load_model(path, manifest={})
    torch.save(_set(state, "network.image_size", 10**6), path)
    with pytest.raises(UserError, match=r"field 'network.image_size' must be an integer in 1\.\.512, got 1000000"):
        load_model(path, manifest={})
