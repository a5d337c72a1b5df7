"""One search run: data, supernet, optimizers, what an epoch does, run-folder outputs, checkpoint contents.

The epoch loop, the schedule replay and the checkpoint checks of resume are
:class:`fairdarts.runner.EpochRun`'s, shared with the retraining.

Per epoch: search steps over the weight half (each an architecture step on the next batch of
a persistent iterator over the architecture half, then a weight step), validation on the
architecture half (eval mode, no augmentation; reported as valid acc like the official code),
the derived genotype, the alpha history, plots, and an atomic ``checkpoint.pt``. With
``--hessian_every`` the collapse instrument measures the architecture Hessian's largest eigenvalue
after validation (:mod:`fairdarts.search.hessian`, records in :mod:`fairdarts.search.collapse`);
with ``--early_stop_eigen`` its rule may end the search early, handing back the genotype of an
earlier epoch.

The cosine schedule is stepped *after* each epoch (the official code steps it before, which
shifts it by one epoch on current PyTorch); see :func:`fairdarts.search.loop.make_scheduler`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from fairdarts.checkpoint_schema import SEARCH, Context
from fairdarts.data import (
    BatchAugment, InfiniteBatches, InMemoryImages, dataset_info, fit_to_image, load_first, make_loader,
    split_train_portion,
)
from fairdarts.distributed import DistContext, all_reduce_mean_, all_reduce_sum_
from fairdarts.errors import UserError
from fairdarts.guards import NonFiniteGuard, check_finite_metric
from fairdarts.reproducibility import capture_rng_state
from fairdarts.run_dir import progress
from fairdarts.runner import EpochRun, load_optimizer
from fairdarts.search.architect import ArchObjective, Architect
from fairdarts.search.artifacts import AlphaHistory, plot_alpha_history, write_gate_weights, write_genotype
from fairdarts.search.collapse import EIGEN_FILE, PLOT_FILE, EigenHistory, EigenRecord
from fairdarts.search.config import SearchConfig
from fairdarts.search.graphed import graphed_or_eager
from fairdarts.search.hessian import Batch, architecture_eigenvalues
from fairdarts.search.loop import EpochStats, SearchStep, make_scheduler, train_epoch, validate, weight_optimizer
from fairdarts.search.spaces import SearchSupernet, gate_arrays, space_of
from fairdarts.search_space import Genotype, MobileGenotype, native

CHECKPOINT_FORMAT = "fairdarts-search/1"


# ----- data ---------------------------------------------------------------------------------
@dataclass
class SearchData:
    train: Any                    # weight batches; has set_epoch(e)
    arch: Iterator                # persistent iterator over the architecture half
    valid: Iterable               # the architecture half, no augmentation, fixed order
    num_classes: int
    in_channels: int
    probe: Iterable               # the first --hessian_batches batches of ``valid``: the Hessian's data
    notes: tuple[str, ...] = ()   # augmentation fitted to the image size (see fit_to_image)


def build_data(cfg: SearchConfig, dist: DistContext) -> SearchData:
    """Split the training set by ``train_portion``: weights on the first part, alphas on the rest.

    In-memory datasets are cut to ``--subset`` before resizing (so a CPU smoke run does not
    resize 50k images) and augmented on the device; on-disk trees (``folder``) go through
    DataLoader workers with their own transforms (validation then sees the training transforms,
    as in the official code)."""
    data = load_first(cfg.dataset, cfg.data, "train", cfg.subset, download=cfg.download, image_size=cfg.image_size,
                      resize_after_cut=True)
    n, info = len(data), dataset_info(data)
    w_idx, a_idx = split_train_portion(n, cfg.train_portion)
    if not w_idx or not a_idx:
        raise UserError(f"--train_portion {cfg.train_portion} of {n} images leaves an empty half; use more images")
    fitted = fit_to_image(cfg.image_size or info.image_size, cfg.cutout_length if cfg.cutout else 0)
    kw = dict(batch_size=dist.per_rank_batch(cfg.batch_size), device=dist.device, workers=cfg.workers,
              rank=dist.rank, world_size=dist.world_size)
    train = make_loader(data, w_idx, shuffle=True, seed=cfg.seed,
                        augment=BatchAugment(info.mean, info.std, crop_padding=fitted.crop_padding,
                                             cutout_length=fitted.cutout_length), **kw)
    arch = make_loader(data, a_idx, shuffle=True, seed=cfg.seed + 1, augment=BatchAugment(info.mean, info.std), **kw)
    valid = make_loader(data, a_idx, shuffle=False, seed=cfg.seed, **kw)
    # the Hessian's batches: whole ones where the half allows (BatchNorm cannot normalise one image)
    probe_idx = a_idx[:cfg.hessian_batches * cfg.batch_size]
    probe = make_loader(data, probe_idx, shuffle=False, seed=cfg.seed, drop_last=len(probe_idx) >= cfg.batch_size,
                        **kw)
    notes = fitted.notes if isinstance(data, InMemoryImages) else ()  # on-disk images: their own transforms
    return SearchData(train, InfiniteBatches(arch), valid, info.num_classes, info.in_channels, probe, notes)


# ----- model and optimizers -----------------------------------------------------------------
def build_supernet(cfg: SearchConfig, num_classes: int, in_channels: int, device: torch.device) -> SearchSupernet:
    """The supernet of ``cfg.search_space`` (cell or mobile), on ``device``."""
    return space_of(cfg).build_supernet(cfg, num_classes, in_channels).to(device)


def build_step(cfg: SearchConfig, model: SearchSupernet, dist: DistContext | None = None,
               guard: NonFiniteGuard | None = None) -> SearchStep:
    """The architect, the weight optimizer and the step that uses them, from a config."""
    reduce = _grad_reducer(dist)
    w_optimizer = weight_optimizer(model.weight_parameters(), cfg.learning_rate, cfg.momentum, cfg.weight_decay)
    on_gpu = next(model.parameters()).device.type == "cuda"
    architect = Architect(model, cfg.arch_learning_rate, (cfg.arch_beta1, cfg.arch_beta2), cfg.arch_weight_decay,
                          ArchObjective(cfg.zero_one_weight, cfg.sep_loss), unrolled=cfg.unrolled,
                          hessian=cfg.hessian, reduce_grads=reduce, guard=guard,
                          capturable=cfg.cuda_graphs and on_gpu)
    return SearchStep(model, architect, w_optimizer, cfg.grad_clip, cfg.single_level, reduce, guard)


def _grad_reducer(dist: DistContext | None):
    """Under torchrun every gradient is averaged over ranks (no DDP wrapper: the architecture
    step takes gradients with torch.autograd.grad, which DDP's reducer does not see)."""
    if dist is None or not dist.is_distributed:
        return None

    def reduce(grads: Sequence[Tensor]) -> None:
        for g in grads:
            all_reduce_mean_(g)
    return reduce


# ----- the run ------------------------------------------------------------------------------
class Searcher(EpochRun[SearchConfig]):
    """Everything one run holds; :meth:`run` searches from the start or from a checkpoint."""

    checkpoint_format = CHECKPOINT_FORMAT
    checkpoint_schema = SEARCH
    checkpoint_kind = "a search checkpoint"
    model_name = "this search's supernet"
    rate_flags = "--learning_rate (or --arch_learning_rate)"

    def __init__(self, cfg: SearchConfig, run_dir: Path, dist: DistContext, logger: logging.Logger,
                 data: SearchData | None = None):
        super().__init__(cfg, cfg.epochs, run_dir, dist, logger)
        self.data = data if data is not None else build_data(cfg, dist)
        for note in self.data.notes:
            logger.info("%s", note)
        self.space = space_of(cfg)
        self.primitives = self.space.primitives
        self.model = build_supernet(cfg, self.data.num_classes, self.data.in_channels, dist.device)
        self.guard = NonFiniteGuard(cfg.skip_nonfinite)
        self.step = build_step(cfg, self.model, dist, self.guard)
        self.run_step = graphed_or_eager(self.step, cfg.cuda_graphs, dist.device, cfg.skip_nonfinite, logger)
        self.history = AlphaHistory(self.space.groups)
        self.eigen = EigenHistory()
        self._probe: list[Batch] | None = None
        if dist.device.type == "cpu" and native.library() is not None:  # when off, library() logged why, once
            logger.info("native CPU kernels: %s", native.status())

    # ----- checkpoint ----------------------------------------------------------------------
    def state_dict(self, epochs_done: int, genotype: Genotype | MobileGenotype) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epochs_done,
            "model": self.model.state_dict(),
            "w_optimizer": self.step.w_optimizer.state_dict(),
            "a_optimizer": self.step.architect.optimizer.state_dict(),
            "arch_batches": self.data.arch.state_dict(),
            "rng": capture_rng_state(),
            "alpha_history": self.history.state_dict(),
            "hessian": self.eigen.state_dict(),
            "config": dataclasses.asdict(self.cfg),
            "genotype": genotype.to_dict(),
        }

    def schema_context(self) -> Context:
        """The epoch bound, and the alpha shapes the checkpoint's history must have."""
        shapes = {g: tuple(a.shape) for g, a in zip(self.space.groups, self.model.arch_parameters())}
        return Context(epochs=self.epochs, alpha_shapes=shapes)

    def load_modules(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        load_optimizer(self.step.w_optimizer, state["w_optimizer"], "w_optimizer")
        load_optimizer(self.step.architect.optimizer, state["a_optimizer"], "a_optimizer")

    def load_progress(self, state: dict[str, Any]) -> None:
        self.data.arch.load_state_dict(state["arch_batches"])
        self.history = AlphaHistory.from_state_dict(state["alpha_history"])
        self.eigen = EigenHistory.from_state_dict(state.get("hessian"))  # absent before the instrument

    # ----- loop ----------------------------------------------------------------------------
    def make_scheduler(self, start_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
        cfg = self.cfg
        return make_scheduler(self.step.w_optimizer, cfg.learning_rate, cfg.learning_rate_min, cfg.epochs, start_epoch)

    def run_epoch(self, epoch: int, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        lr = scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        stats = self.train_one_epoch(epoch, lr)
        valid_loss, valid_acc = self.validate()
        check_finite_metric("validation loss", valid_loss, epoch)
        if self.hessian_due(epoch):
            self.measure_collapse(epoch)
        self.end_of_epoch(epoch, lr, stats, valid_loss, valid_acc, time.perf_counter() - t0)
        scheduler.step()

    def train_one_epoch(self, epoch: int, lr: float) -> EpochStats:
        cfg = self.cfg
        self.data.train.set_epoch(epoch)
        total = self.batches_per_pass(self.data.train)
        batches = progress(self.data.train, total=total, desc=f"epoch {epoch}",
                           enabled=cfg.progress and self.dist.is_main)
        batches = self.guard.track(epoch, batches)

        def report(step: int, m: dict[str, float]) -> None:
            self.log.info("epoch %d step %03d/%d loss %.4f acc %.2f arch_loss %.4f zero_one %.3e",
                          epoch, step, total, m["loss"], m["acc"], m["arch_loss"], m["zero_one"])

        self.log.info("epoch %d lr %.6e", epoch, lr)
        return train_epoch(self.run_step, batches, None if cfg.single_level else self.data.arch,
                           cfg.max_steps_per_epoch, report, cfg.report_freq)

    def validate(self) -> tuple[float, float]:
        cfg = self.cfg
        total = self.batches_per_pass(self.data.valid)
        batches = progress(self.data.valid, total=total, desc="valid", enabled=cfg.progress and self.dist.is_main)
        sums = validate(self.model, batches, cfg.max_steps_per_epoch)
        if self.dist.is_distributed:
            all_reduce_sum_(sums)
        loss_sum, correct, n = sums.tolist()
        return (loss_sum / n, 100.0 * correct / n) if n else (float("nan"), float("nan"))

    def genotype_of(self, gates: Sequence[np.ndarray]) -> Genotype | MobileGenotype:
        """The genotype the run's parse method derives from gate values (one array per group)."""
        return self.space.derive(gates, self.cfg.method, self.cfg.op_threshold)

    def current_genotype(self) -> Genotype | MobileGenotype:
        return self.genotype_of(gate_arrays(self.model))

    # ----- collapse instrument -------------------------------------------------------------
    def hessian_due(self, epoch: int) -> bool:
        """Every ``--hessian_every`` epochs from epoch 0, and after the last (as RobustDARTS)."""
        every = self.cfg.hessian_every
        return every > 0 and (epoch % every == 0 or epoch == self.epochs - 1)

    def measure_collapse(self, epoch: int) -> None:
        """Record the Hessian's eigenvalues after ``epoch``; then apply the early-stop rule
        (never after the last epoch). Every rank measures on its own batches with the products
        averaged over ranks, so all ranks hold the same numbers and take the same decision."""
        cfg = self.cfg
        if self._probe is None:
            self._probe = list(self.data.probe)
        weight = cfg.zero_one_weight if cfg.hessian_zero_one else 0.0
        objective = ArchObjective(weight, cfg.sep_loss)
        t0 = time.perf_counter()
        estimate = architecture_eigenvalues(self.model, self._probe, lambda *a: objective(*a)[0],
                                            cfg.arch_weight_decay, cfg.hessian_iters, cfg.hessian_tol,
                                            all_reduce_mean_ if self.dist.is_distributed else None)
        self.eigen.records.append(EigenRecord.of(epoch, estimate, len(self._probe), time.perf_counter() - t0))
        self.log.info("epoch %d %s", epoch, self.eigen.records[-1].describe())
        rule = cfg.early_stop_rule
        if rule is not None and epoch < self.epochs - 1:
            self.eigen.stop = rule.check(self.eigen.epochs, self.eigen.values)
            if self.eigen.stop is not None:
                self.log.info(self.eigen.stop.describe(rule.factor, rule.delta))

    def stops_early(self) -> bool:
        return self.cfg.early_stop_eigen and self.eigen.stop is not None

    def _write_eigen(self, epoch: int) -> None:
        """TensorBoard scalars, ``hessian_eigen.json`` and its plot, after an epoch with a record."""
        record = self.eigen.records[-1]
        for tag, value in (("hessian/eigenvalue", record.largest), ("hessian/smallest", record.smallest),
                           ("hessian/largest_magnitude", record.largest_magnitude),
                           ("hessian/iterations", record.iterations), ("hessian/residual", record.residual_largest)):
            self.writer.add_scalar(tag, value, epoch)
        rule = self.cfg.early_stop_rule
        self.eigen.save_json(self.run_dir / EIGEN_FILE, rule)
        self.eigen.plot(self.run_dir / "plots" / PLOT_FILE, rule,
                        "largest eigenvalue of the architecture Hessian (validation loss)")

    def end_of_epoch(self, epoch: int, lr: float, stats: EpochStats, valid_loss: float, valid_acc: float,
                     seconds: float) -> Genotype | MobileGenotype:
        """Refuses non-finite weights or alphas before anything of the epoch is derived or written."""
        self.check_finite_state({"model": self.model.state_dict()}, epoch + 1)
        genotype = self.current_genotype()
        gated = self.model.gated_weights()
        self.history.record(epoch, self.model.arch_parameters(), gated)
        self.log.info("epoch %d train_acc %.2f train_loss %.4f valid_acc %.2f valid_loss %.4f arch_loss %.4f "
                      "zero_one %.3e (%d steps, %.1f s)", epoch, stats.train_acc, stats.train_loss, valid_acc,
                      valid_loss, stats.arch_loss, stats.zero_one, stats.steps, seconds)
        self.log.info("epoch %d genotype %s", epoch, genotype.to_text())
        if self.dist.is_main:
            self._write_epoch(epoch, lr, stats, valid_loss, valid_acc, genotype, gated)
        return genotype

    def _write_epoch(self, epoch: int, lr: float, stats: EpochStats, valid_loss: float, valid_acc: float,
                     genotype: Genotype | MobileGenotype, gated: tuple[Tensor, ...]) -> None:
        scalars = {"train/loss": stats.train_loss, "train/acc": stats.train_acc, "valid/loss": valid_loss,
                   "valid/acc": valid_acc, "arch/loss": stats.arch_loss, "arch/cross_entropy": stats.arch_ce,
                   "arch/zero_one_loss": stats.zero_one, "lr": lr, **self.space.scalars(genotype)}
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, epoch)
        for group, w in zip(self.space.groups, gated):
            self.writer.add_histogram(f"gates/{group}", w.detach().cpu(), epoch)
        write_genotype(self.run_dir, genotype, epoch)
        write_gate_weights(self.run_dir, dict(zip(self.space.groups, gate_arrays(self.model))))
        self.history.save_npz(self.run_dir / "alpha_history.npz")
        if self.eigen.records and self.eigen.records[-1].epoch == epoch:
            self._write_eigen(epoch)
        if (epoch + 1) % self.cfg.plot_every == 0 or epoch + 1 == self.cfg.epochs:
            plot_alpha_history(self.history, self.primitives, self.run_dir / "plots", self.space.row_labels,
                               self.space.plot_title)
        self.save_checkpoint(epoch + 1, genotype)

    def final_gates(self) -> list[np.ndarray]:
        """The gates the run hands back: the supernet's, or after an early stop those of the
        epoch the rule designated (from the alpha history, back in the supernet's float32)."""
        if not self.stops_early():
            return gate_arrays(self.model)
        index = self.history.epochs.index(self.eigen.stop.genotype_epoch)
        return [self.history.gated[g][index].astype(np.float32) for g in self.space.groups]

    def finish(self) -> Genotype | MobileGenotype:
        """The final genotype (its files and, for cells with edges, their pictures on the main rank)."""
        gates = self.final_gates()
        genotype = self.genotype_of(gates)
        if self.dist.is_main:
            self.write_final(genotype, gates)
        return genotype

    def write_final(self, genotype: Genotype | MobileGenotype, gates: Sequence[np.ndarray]) -> None:
        write_genotype(self.run_dir, genotype)
        if self.stops_early():
            write_gate_weights(self.run_dir, dict(zip(self.space.groups, gates)))
            self.log.info("early stop (DARTS-ES): the final genotype and the gate files are those of epoch %d",
                          self.eigen.stop.genotype_epoch)
        self.log.info("final genotype (%s, op_threshold %s): %s", self.cfg.method, self.cfg.op_threshold,
                      genotype.to_text())
        self.space.finish(genotype, gates, self.run_dir, self.log, self.cfg.method, self.cfg.op_threshold)

