"""One retraining run: data, network, optimizer, what an epoch does, run-folder outputs, checkpoint contents.

The epoch loop, the schedule replay and the checkpoint checks of resume are
:class:`fairdarts.runner.EpochRun`'s, shared with the search.

Per epoch: drop path set to ``drop_path_prob * epoch / epochs`` (the official ramp), training
steps over the (sharded) training set, evaluation on the test set (the official code reports
it as "valid"; ``--eval_every N`` / ``--test_subset N`` make that pass rarer / smaller),
TensorBoard scalars, an atomic ``checkpoint.pt`` and, when test top-1 improved,
``model_best.pt``. Both hold the genotype, the network sizes and the dataset, so that
``evaluate.py --model_path`` needs no other flag, and ``state_dict`` under the official key.
The checkpoint also carries the best epoch's weights (``None`` when the last epoch is the best)
and is written first: ``model_best.pt`` is derived from it, and a resume rewrites it when a
kill between the two writes left an older one behind.

Resume restarts at the epoch after the last checkpoint with the optimizer, GradScaler and RNG
states restored; the data order and augmentation are functions of (seed, epoch, batch), so a
resumed run computes what the uninterrupted one would have.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from fairdarts.checkpoint import TRAIN_FORMAT as CHECKPOINT_FORMAT, load_checkpoint
from fairdarts.checkpoint_schema import PROJECT_MODEL, TRAIN, check_checkpoint
from fairdarts.data import BatchAugment, InMemoryImages, dataset_info, fit_to_image, load_first, make_loader
from fairdarts.distributed import DistContext, all_reduce_sum_
from fairdarts.errors import UserError
from fairdarts.guards import NonFiniteGuard, check_finite_metric
from fairdarts.invocation import command
from fairdarts.metrics import evaluate_sums
from fairdarts.reproducibility import capture_rng_state
from fairdarts.resume import CHECKPOINT
from fairdarts.run_dir import progress
from fairdarts.runner import EpochRun, load_optimizer, replay_schedule
from fairdarts.search_space import Genotype, MobileGenotype, NetworkSpec, build_network, get_genotype
from fairdarts.search_space.run_genotype import genotype_from_run
from fairdarts.train.config import TrainConfig
from fairdarts.train.step import TrainStep

BEST = "model_best.pt"


# ----- genotype -----------------------------------------------------------------------------
def resolve_arch(cfg: TrainConfig) -> Genotype | MobileGenotype:
    """``--arch`` through :func:`get_genotype`; a search run folder through
    :func:`genotype_from_run` (re-derived from its final gate weights with ``--parse_method``),
    refused when a cell of its genotype is empty."""
    folder = Path(cfg.arch)
    if not folder.is_dir():
        if cfg.parse_method is not None:
            raise UserError(f"--parse_method re-derives a search run folder; --arch {cfg.arch} is not a folder")
        return get_genotype(cfg.arch)
    genotype, advice = genotype_from_run(folder, cfg.parse_method, cfg.op_threshold)
    if advice:
        raise UserError(f"--arch {folder}: {advice}; both work here directly, e.g. "
                        f"`{command('train')} --arch {folder} --parse_method darts`")
    return genotype


# ----- data ---------------------------------------------------------------------------------
@dataclass
class TrainData:
    train: Any          # has set_epoch(e) and len()
    test: Iterable
    num_classes: int
    in_channels: int
    image_size: int
    info: Any
    dropped_single: bool = False  # the last training batch of one image is dropped (see build_data)
    notes: tuple[str, ...] = ()   # augmentation fitted to the image size (see fit_to_image)


def build_data(cfg: TrainConfig, dist: DistContext) -> TrainData:
    """Training and test splits; in-memory datasets are augmented on the device in batches."""
    train = load_first(cfg.dataset, cfg.data, "train", cfg.subset, download=cfg.download, image_size=cfg.image_size)
    test = load_first(cfg.dataset, cfg.data, "test", cfg.test_subset, download=cfg.download, image_size=cfg.image_size)
    info = dataset_info(train)
    per_rank = dist.per_rank_batch(cfg.batch_size)
    if per_rank < 2 * cfg.accum_steps:
        raise UserError(f"--accum_steps {cfg.accum_steps} splits each rank's batch of {per_rank} images into "
                        "micro-batches of fewer than 2 images, which BatchNorm cannot normalise in training mode; "
                        f"use --accum_steps {max(1, per_rank // 2)} or less")
    # A last batch of one image: BatchNorm in training mode (the auxiliary head's, 1 x 1 pixels)
    # cannot normalise a single value, so that image is dropped, as drop_last would.
    drop_single = math.ceil(len(train) / dist.world_size) % per_rank == 1
    size = cfg.image_size or info.image_size
    fitted = fit_to_image(size, cfg.cutout_length if cfg.cutout else 0, crop=cfg.augment)
    aug = BatchAugment(info.mean, info.std, crop_padding=fitted.crop_padding, flip=cfg.augment,
                       cutout_length=fitted.cutout_length, auto_augment=cfg.auto_aug)
    plain = BatchAugment(info.mean, info.std, crop_padding=0, flip=False)
    kw = dict(batch_size=per_rank, device=dist.device, workers=cfg.workers, rank=dist.rank, world_size=dist.world_size,
              seed=cfg.seed)
    train_loader = make_loader(train, None, shuffle=True, augment=aug, drop_last=drop_single, **kw)
    test_loader = make_loader(test, None, shuffle=False, augment=plain, **kw)
    notes = fitted.notes if isinstance(train, InMemoryImages) else ()  # on-disk images: their own transforms
    return TrainData(train_loader, test_loader, info.num_classes, info.in_channels, size, info, drop_single, notes)


# ----- network, optimizer, schedule ---------------------------------------------------------
def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                   start_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine to ``learning_rate_min`` (CIFAR) or ``gamma`` per epoch (ImageNet), with
    ``warmup_epochs`` of linear warm-up first, stepped after each epoch and replayed to
    ``start_epoch`` on resume (:func:`fairdarts.runner.replay_schedule`)."""
    def build(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if cfg.warmup_epochs:
            return torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: warmup_factor(epoch, cfg))
        if cfg.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.learning_rate_min)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=cfg.gamma)
    return replay_schedule(optimizer, cfg.learning_rate, build, start_epoch)


def warmup_factor(epoch: int, cfg: TrainConfig) -> float:
    """Learning-rate factor of ``epoch`` with ``warmup_epochs`` of linear warm-up (``(e+1)/w``),
    then the schedule over the remaining epochs (cosine to ``learning_rate_min``, or ``gamma``
    per epoch)."""
    w = cfg.warmup_epochs or 0
    if epoch < w:
        return (epoch + 1) / w
    t = epoch - w
    if cfg.lr_schedule == "exponential":
        return cfg.gamma ** t
    floor = cfg.learning_rate_min / cfg.learning_rate if cfg.learning_rate else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t / max(cfg.epochs - w, 1)))


def _wrap(model: nn.Module, cfg: TrainConfig, dist: DistContext) -> nn.Module:
    """SyncBatchNorm, DDP and torch.compile around the plain network (kept as ``self.net``)."""
    if dist.is_distributed:
        if cfg.sync_bn:
            if dist.device.type == "cpu":
                raise UserError("--sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        model = torch.compile(model)
    return model


# ----- the run ------------------------------------------------------------------------------
class Trainer(EpochRun[TrainConfig]):
    """Everything one run holds; :meth:`run` trains from the start or from a checkpoint."""

    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_schema = TRAIN
    checkpoint_kind = "a retraining checkpoint"
    model_name = "this run's network"

    def __init__(self, cfg: TrainConfig, genotype: Genotype | MobileGenotype, run_dir: Path, dist: DistContext,
                 logger: logging.Logger, data: TrainData | None = None):
        if cfg.epochs is None:
            raise ValueError("Trainer needs a resolved config (TrainConfig.resolved() fills epochs)")
        super().__init__(cfg, cfg.epochs, run_dir, dist, logger)
        self.genotype = genotype
        self.data = data if data is not None else build_data(cfg, dist)
        for note in self.data.notes:
            logger.info("%s", note)
        if self.data.dropped_single:
            logger.info("note: the last training batch of every epoch would hold one image, which BatchNorm cannot "
                        "normalise in training mode; it is dropped")
        self.spec = NetworkSpec.of(genotype, self.data.num_classes, self.data.in_channels, self.data.image_size,
                                   cfg.init_channels, cfg.layers, cfg.auxiliary and cfg.auxiliary_weight > 0,
                                   cfg.family == "imagenet", cfg.width_mult, cfg.dropout)
        self.meta = self.spec.to_dict()  # the checkpoint's "network" record
        self.net = build_network(self.spec).to(dist.device)
        if cfg.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.model = _wrap(self.net, cfg, dist)
        self.optimizer = torch.optim.SGD(self.net.parameters(), cfg.learning_rate, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.guard = NonFiniteGuard(cfg.skip_nonfinite)
        self.step = TrainStep(self.model, self.optimizer, cfg.auxiliary_weight, cfg.grad_clip, cfg.label_smoothing,
                              cfg.accum_steps, cfg.amp, cfg.amp_dtype, cfg.channels_last, self.guard)
        self.best_top1 = -math.inf
        self.best_epoch = 0  # epochs done when the best test top-1 was reached; 0: none yet
        self.best_metrics: dict[str, float] = {}
        self.best_weights: dict[str, torch.Tensor] | None = None  # a CPU copy of the best epoch's weights
        self.metrics: dict[str, float] = {}
        if cfg.amp and dist.device.type != "cuda":
            logger.info("note: --amp acts on CUDA only; this run on %s uses float32", dist.device)

    # ----- checkpoint ----------------------------------------------------------------------
    def state_dict(self, epochs_done: int, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epochs_done,
            "state_dict": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.step.scaler.state_dict(),
            "rng": capture_rng_state(),
            "best_acc_top1": self.best_top1,
            # The best weights travel in the checkpoint (None: they are this state_dict), so
            # model_best.pt can always be rebuilt from it: see write_best / repair_best.
            "best": {"epoch": self.best_epoch, "acc_top1": self.best_top1, "metrics": self.best_metrics,
                     "state_dict": None if self.best_epoch == epochs_done else self.best_weights},
            "metrics": metrics,
            "config": dataclasses.asdict(self.cfg),
            "genotype": self.genotype.to_dict(),
            "network": self.meta,
            "dataset": self._dataset_meta(),
        }

    def _dataset_meta(self) -> dict[str, Any]:
        return {"name": self.cfg.dataset, "num_classes": self.data.num_classes,
                "mean": list(self.data.info.mean), "std": list(self.data.info.std)}

    def load_modules(self, state: dict[str, Any]) -> None:
        if "optimizer" not in state:
            raise UserError(f"this file holds best weights only, not a resumable state; resume from {CHECKPOINT}")
        self.net.load_state_dict(state["state_dict"])
        load_optimizer(self.optimizer, state["optimizer"], "optimizer")

    def load_progress(self, state: dict[str, Any]) -> None:
        if state.get("scaler"):
            self.step.scaler.load_state_dict(state["scaler"])
        self.best_top1 = float(state["best_acc_top1"])
        best = state.get("best")  # absent in checkpoints of earlier versions
        if isinstance(best, dict):
            self.best_epoch = int(best["epoch"])
            self.best_metrics = dict(best.get("metrics") or {})
            weights = best.get("state_dict")
            self.best_weights = (weights if weights is not None or not self.best_epoch
                                 else {k: v.detach().cpu().clone() for k, v in state["state_dict"].items()})

    def resume(self, path: Path) -> None:
        super().resume(path)
        if self.dist.is_main:
            self.repair_best()

    # ----- best weights --------------------------------------------------------------------
    def best_state(self) -> dict[str, Any]:
        """``model_best.pt``: the best epoch's weights with what evaluate.py needs, and no optimizer."""
        return {"format": CHECKPOINT_FORMAT, "epoch": self.best_epoch, "state_dict": self.best_weights,
                "best_acc_top1": self.best_top1, "metrics": self.best_metrics,
                "config": dataclasses.asdict(self.cfg), "genotype": self.genotype.to_dict(), "network": self.meta,
                "dataset": self._dataset_meta()}

    def write_best(self) -> None:
        self.write_state(self.best_state(), BEST)

    def repair_best(self) -> None:
        """Rewrite ``model_best.pt`` from the checkpoint when it is missing, unreadable or of another
        epoch than the checkpoint's best (a kill between the two writes leaves it behind)."""
        if not self.best_epoch or self.best_weights is None:
            return
        path = self.run_dir / BEST
        held: Any = None
        if path.is_file():
            try:
                state = load_checkpoint(path)
                check_checkpoint(state, PROJECT_MODEL, str(path))
                held = state.get("epoch")
            except UserError:
                held = "unreadable"
        if held == self.best_epoch:
            self.kept[BEST] = self.best_epoch
            return
        self.write_best()
        self.log.info("%s repaired: it held %s, the checkpoint's best is epoch %d (test top-1 %.2f)", BEST,
                      "nothing" if held is None else (held if held == "unreadable" else f"epoch {held}"),
                      self.best_epoch, self.best_top1)

    # ----- loop ----------------------------------------------------------------------------
    def make_scheduler(self, start_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
        return make_scheduler(self.optimizer, self.cfg, start_epoch)

    def run_epoch(self, epoch: int, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        cfg = self.cfg
        lr = scheduler.get_last_lr()[0]
        self.net.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        t0 = time.perf_counter()
        train = self.train_one_epoch(epoch, lr)
        test = self.test(epoch) if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs else {}
        self.metrics = {**train, **test, "lr": lr, "drop_path_prob": self.net.drop_path_prob,
                        "seconds": time.perf_counter() - t0}
        scheduler.step()
        self.end_of_epoch(epoch, self.metrics)

    def finish(self) -> dict[str, float]:
        """The last epoch's metrics (none when no epoch ran)."""
        return self.metrics

    def _reduce(self, sums: torch.Tensor) -> torch.Tensor:
        if self.dist.is_distributed:
            all_reduce_sum_(sums)
        return sums

    def train_one_epoch(self, epoch: int, lr: float) -> dict[str, float]:
        cfg = self.cfg
        self.data.train.set_epoch(epoch)
        self.model.train()
        total = self.batches_per_pass(self.data.train)
        show_bar = cfg.progress and self.dist.is_main and sys.stderr.isatty()
        batches = progress(itertools.islice(self.data.train, total), total=total, desc=f"epoch {epoch}",
                           enabled=show_bar)
        self.log.info("epoch %d lr %.6e drop_path_prob %.4f", epoch, lr, self.net.drop_path_prob)
        sums = torch.zeros(4, dtype=torch.float64, device=self.dist.device)
        for step, batch in enumerate(self.guard.track(epoch, batches), 1):
            r = self.step(batch)
            sums += torch.stack([r.loss.double(), r.correct1.double(), r.correct5.double(),
                                 torch.tensor(float(r.n), dtype=torch.float64, device=sums.device)])
            if step % cfg.report_freq == 0:
                loss, top1, top5 = _means(sums.clone())
                self.log.info("epoch %d step %03d/%d loss %.4f top1 %.2f top5 %.2f",
                              epoch, step, total, loss, top1, top5)
        loss, top1, top5 = _means(self._reduce(sums))
        return {"train_loss": loss, "train_top1": top1, "train_top5": top5}

    def test(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        total = self.batches_per_pass(self.data.test)
        batches = progress(self.data.test, total=total, desc="test", enabled=cfg.progress and self.dist.is_main)
        sums = evaluate_sums(self.model, batches, cfg.max_steps_per_epoch, cfg.amp, cfg.amp_dtype, cfg.channels_last)
        loss, top1, top5 = _means(self._reduce(sums))
        if not math.isnan(top1):  # NaN top-1: no test image, nothing was measured
            check_finite_metric("test loss", loss, epoch)
        return {"test_loss": loss, "test_top1": top1, "test_top5": top5}

    def end_of_epoch(self, epoch: int, m: dict[str, float]) -> None:
        """Log, TensorBoard, checkpoint; ``model_best.pt`` when this epoch's test pass (if it had one) improved."""
        tested = "test_top1" in m
        improved = tested and m["test_top1"] > self.best_top1
        if tested:
            self.best_top1 = max(self.best_top1, m["test_top1"])
            self.log.info("epoch %d train_loss %.4f train_top1 %.2f test_loss %.4f test_top1 %.2f test_top5 %.2f "
                          "best_top1 %.2f (%.1f s)", epoch, m["train_loss"], m["train_top1"], m["test_loss"],
                          m["test_top1"], m["test_top5"], self.best_top1, m["seconds"])
        else:
            self.log.info("epoch %d train_loss %.4f train_top1 %.2f (no test pass: --eval_every %d) (%.1f s)",
                          epoch, m["train_loss"], m["train_top1"], self.cfg.eval_every, m["seconds"])
        if not self.dist.is_main:
            return
        for tag, key in (("train/loss", "train_loss"), ("train/top1", "train_top1"), ("train/top5", "train_top5"),
                         ("test/loss", "test_loss"), ("test/top1", "test_top1"), ("test/top5", "test_top5"),
                         ("lr", "lr"), ("drop_path_prob", "drop_path_prob")):
            if key in m:
                self.writer.add_scalar(tag, m[key], epoch)
        if improved:
            self.best_epoch, self.best_metrics = epoch + 1, dict(m)
            self.best_weights = {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}
        self.save_checkpoint(epoch + 1, m)  # first: it holds the best too
        if improved:
            self.write_best()  # a kill before this line leaves the old file: resume repairs it


def _means(sums: torch.Tensor) -> tuple[float, float, float]:
    loss, c1, c5, n = sums.tolist()
    if not n:
        return math.nan, math.nan, math.nan
    return loss / n, 100.0 * c1 / n, 100.0 * c5 / n

