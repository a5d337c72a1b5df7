"""The search configuration: presets agree with the one dataclass, and the schedule."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from fairdarts.config import load_config_file
from fairdarts.errors import UserError
from fairdarts.search.config import SearchConfig
from fairdarts.search.loop import make_scheduler

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_fairdarts_preset_restates_the_dataclass_defaults():
    preset = load_config_file(SearchConfig, CONFIGS / "search_fairdarts_cifar10.yaml")
    default = SearchConfig()
    diff = {f.name for f in dataclasses.fields(SearchConfig) if getattr(preset, f.name) != getattr(default, f.name)}
    assert diff == {"alpha_init", "parse_method"} and preset.alpha_init == "zeros"  # 'auto': zeros for sigmoid
    assert preset.method == default.method == "threshold_sparse"  # the cell space's default parse method


def test_darts_presets_carry_the_darts_defaults():
    first = load_config_file(SearchConfig, CONFIGS / "search_darts_first_order.yaml")
    second = load_config_file(SearchConfig, CONFIGS / "search_darts_second_order.yaml")
    for cfg in (first, second):
        assert (cfg.gate, cfg.primitives, cfg.batch_size, cfg.learning_rate, cfg.arch_learning_rate) == \
            ("softmax", "darts", 64, 0.025, 3e-4)
        assert (cfg.arch_beta1, cfg.arch_beta2, cfg.alpha_init, cfg.parse_method) == (0.5, 0.999, "randn", "darts")
        assert cfg.zero_one_weight == 0.0
    assert not first.unrolled and second.unrolled
    assert dataclasses.replace(second, unrolled=False) == first


def test_cross_field_checks():
    with pytest.raises(UserError, match="exclude"):
        SearchConfig(unrolled=True, single_level=True).validate()
    with pytest.raises(UserError, match="learning_rate_min"):
        SearchConfig(learning_rate=0.001, learning_rate_min=0.01).validate()


def test_cosine_schedule_is_stepped_after_each_epoch_and_replays_on_resume():
    lr, lr_min, epochs = 0.1, 0.01, 5
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, lr)
    sched = make_scheduler(opt, lr, lr_min, epochs)
    seen = []
    for _ in range(epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [lr_min + (lr - lr_min) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    assert seen[0] == lr and seen == pytest.approx(expected, rel=1e-12)
    for start in range(epochs):
        resumed = torch.optim.SGD(params, 0.5)  # a loaded optimizer may carry any lr
        make_scheduler(resumed, lr, lr_min, epochs, start)
        assert resumed.param_groups[0]["lr"] == seen[start]
