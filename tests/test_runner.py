"""The shared run skeleton: config base, schedule replay, checkpoint checks, data helpers."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from fairdarts.checkpoint_schema import EPOCH, RNG, Key, Record, Weights
from fairdarts.data import InMemoryLoader, TorchLoader, load_first, make_loader, make_synthetic
from fairdarts.distributed import DistContext
from fairdarts.errors import UserError
from fairdarts.reproducibility import capture_rng_state
from fairdarts.run_config import RESUME_OVERRIDABLE, RunConfig
from fairdarts.runner import EpochRun, replay_schedule
from fairdarts.search.config import RESUME_OVERRIDABLE as SEARCH_OVERRIDABLE
from fairdarts.search.config import SearchConfig
from fairdarts.train.config import TrainConfig
from fairdarts.train.trainer import make_scheduler as train_scheduler


def test_search_and_train_configs_share_the_run_fields():
    shared = {f.name for f in dataclasses.fields(RunConfig)}
    for cls in (SearchConfig, TrainConfig):
        assert issubclass(cls, RunConfig) and shared <= {f.name for f in dataclasses.fields(cls)}
    assert SEARCH_OVERRIDABLE == RESUME_OVERRIDABLE | {
        "plot_every", "cuda_graphs", "hessian_every", "hessian_batches", "hessian_iters", "hessian_tol",
        "hessian_zero_one", "early_stop_eigen", "early_stop_window", "early_stop_delta", "early_stop_factor",
        "early_stop_start"}
    # redefined fields keep their own command's default and range
    assert (SearchConfig().seed, TrainConfig().seed, SearchConfig().cutout, TrainConfig().cutout) == (2, 0, False, True)
    with pytest.raises(UserError, match="--download is not available"):
        TrainConfig(dataset="folder", download=True).validate()


@pytest.mark.parametrize("schedule", [dict(lr_schedule="exponential", warmup_epochs=0),
                                      dict(lr_schedule="cosine", warmup_epochs=2),
                                      dict(lr_schedule="cosine", warmup_epochs=0)])
def test_train_schedule_replays_to_the_same_floats(schedule):
    cfg = TrainConfig(epochs=6, learning_rate=0.1, learning_rate_min=0.001, gamma=0.9, **schedule)
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(params, cfg.learning_rate)
    sched, seen = train_scheduler(opt, cfg, 0), []
    for _ in range(cfg.epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert len(set(seen)) > 1
    for start in range(cfg.epochs):
        resumed = torch.optim.SGD(params, 0.5)  # a loaded optimizer may carry any lr
        assert train_scheduler(resumed, cfg, start).get_last_lr()[0] == seen[start]


def test_replay_schedule_steps_the_built_scheduler():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], 1.0)
    sched = replay_schedule(opt, 0.5, lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5), 3)
    assert sched.get_last_lr()[0] == opt.param_groups[0]["lr"] == 0.5 ** 4


class _TinyRun(EpochRun[RunConfig]):
    checkpoint_format = "fairdarts-tiny/1"
    checkpoint_schema = Record((Key("epoch", EPOCH), Key("model", Weights()), Key("rng", RNG)))
    checkpoint_kind = "a tiny checkpoint"
    model_name = "this tiny model"

    def __init__(self, tmp_path):
        super().__init__(RunConfig(), 1, tmp_path, DistContext(0, 1, 0, torch.device("cpu")), logging.getLogger("test"))
        self.model = torch.nn.Linear(2, 2)

    def load_modules(self, state):
        self.model.load_state_dict(state["model"])

    def load_progress(self, state):
        pass


def test_checkpoint_of_another_kind_or_shape_is_one_line(tmp_path):
    run = _TinyRun(tmp_path)
    with pytest.raises(UserError, match=r"^checkpoint is not a tiny checkpoint \(fairdarts-tiny/1\); cannot resume"):
        run.load_state_dict({"format": "fairdarts-search/1"})
    bad = {"format": "fairdarts-tiny/1", "model": torch.nn.Linear(3, 2).state_dict(), "epoch": 1,
           "rng": capture_rng_state()}
    with pytest.raises(UserError, match=r"^checkpoint does not match this tiny model: [^\n]*$"):
        run.load_state_dict(bad)
    good = {"format": "fairdarts-tiny/1", "model": torch.nn.Linear(2, 2).state_dict(), "epoch": 1,
            "rng": capture_rng_state()}
    with pytest.raises(UserError, match=r"^checkpoint: field 'epoch' must be an integer in 0\.\.1"):
        run.load_state_dict({**good, "epoch": 3})  # beyond the run's one epoch
    run.load_state_dict(good)
    assert run.start_epoch == 1


def test_make_loader_picks_the_loader_by_dataset_kind():
    images = make_synthetic(8, image_size=8)
    loader = make_loader(images, [0, 1, 2], batch_size=2, device="cpu", shuffle=False, seed=0)
    assert isinstance(loader, InMemoryLoader) and len(loader) == 2
    as_dataset = torch.utils.data.TensorDataset(images.images.float(), images.labels)
    assert isinstance(make_loader(as_dataset, None, batch_size=4, device="cpu", shuffle=False, seed=0), TorchLoader)


def test_load_first_keeps_each_commands_resize_order():
    drawn_small = load_first("synthetic", "unused", "train", 4, image_size=8)
    resized = load_first("synthetic", "unused", "train", 4, image_size=8, resize_after_cut=True)
    assert len(drawn_small) == len(resized) == 4 and drawn_small.images.shape == resized.images.shape
    assert torch.equal(drawn_small.images, make_synthetic(512, image_size=8).images[:4])
    assert not torch.equal(drawn_small.images, resized.images)  # the search resizes 32-pixel images
