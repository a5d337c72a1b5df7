"""Every default of the search, in one place: the official Fair DARTS flags and values.

``configs/search_*.yaml`` are presets on top of these (DARTS first and second order carry the
DARTS values: batch 64, lr 0.025, arch lr 3e-4, betas (0.5, 0.999), softmax over 8 ops).
Field names are the official flag names, so ``--batch_size`` etc. keep their meaning.
"""
from __future__ import annotations

from dataclasses import dataclass

from fairdarts.config import SEED_MAX, field_help
from fairdarts.data import DATASET_CHOICES
from fairdarts.errors import UserError
from fairdarts.run_config import RESUME_OVERRIDABLE as RUN_OVERRIDABLE, RunConfig
from fairdarts.search.architect import HESSIAN_MODES
from fairdarts.search.collapse import DartsES
from fairdarts.search.losses import SEP_LOSSES
from fairdarts.search.spaces import ALIASES, space_of
from fairdarts.search_space import GATES, METHODS, MOBILE_METHODS, resolve_primitives
from fairdarts.search_space.topology import MAX_LAYERS

#: A search runs on the in-memory datasets and ImageFolder trees (ImageNet as a 'folder').
SEARCH_DATASETS = tuple(d for d in DATASET_CHOICES if d != "imagenet")

#: Flags that may change when a run is resumed: none of them alters what the search computes.
#: The collapse instrument measures without changing the search, and the early-stop rule only decides
#: where a run ends (as ``--epochs`` does): both may be switched on or retuned part way through a run.
INSTRUMENT_FLAGS: frozenset[str] = frozenset(
    {"hessian_every", "hessian_batches", "hessian_iters", "hessian_tol", "hessian_zero_one", "early_stop_eigen",
     "early_stop_window", "early_stop_delta", "early_stop_factor", "early_stop_start"})
RESUME_OVERRIDABLE: frozenset[str] = RUN_OVERRIDABLE | {"plot_every", "cuda_graphs"} | INSTRUMENT_FLAGS


@dataclass
class SearchConfig(RunConfig):
    # ----- data (the other data and run fields: RunConfig) ------------------------------
    dataset: str = field_help("cifar10", "dataset to search on", choices=SEARCH_DATASETS)
    train_portion: float = field_help(0.5, "fraction of the training set for the weights; the rest trains the alphas",
                                      low=0.0, high=1.0, low_open=True, high_open=True)
    subset: int | None = field_help(None, "use only the first N training images (CPU runs, smoke tests)", low=2)
    cutout: bool = field_help(False, "use cutout on the weight batches")
    # ----- network ---------------------------------------------------------------------
    search_space: str = field_help("cell", "cell (S1, the DARTS cell) or mobile (S2, MobileNetV2-like ImageNet "
                                   "layers); aliases s1, s2", choices=tuple(ALIASES))
    init_channels: int = field_help(16, "channels of the first cell (cell space)", low=1)
    layers: int = field_help(8, "number of cells in the supernet (cell space)", low=1, high=MAX_LAYERS)
    primitives: str = field_help("fairdarts", "candidate ops of the cell space: 'fairdarts' (7 ops), 'darts' "
                                 "(+ none) or a comma list")
    width_mult: float = field_help(1.0, "channel width multiplier of the mobile space", low=0.0, low_open=True)
    mobile_skip: bool = field_help(False, "mobile space: add an identity choice 'skip' on the 13 residual layers "
                                   "(a guess from ProxylessNAS, not from the paper)")
    gate: str = field_help("sigmoid", "sigmoid (Fair DARTS, independent gates) or softmax (DARTS)", choices=GATES)
    alpha_init: str = field_help("auto", "alpha init: zeros (sigmoid 0.5), randn (1e-3 N(0,1)); auto picks by gate",
                                 choices=("auto", "zeros", "randn"))
    # ----- weights ---------------------------------------------------------------------
    epochs: int = field_help(50, "search epochs", low=1)
    batch_size: int = field_help(128, "GLOBAL batch size of weight and architecture batches, split over torchrun ranks",
                                 low=1)
    learning_rate: float = field_help(0.005, "initial SGD learning rate of the weights", low=0.0)
    learning_rate_min: float = field_help(0.001, "final learning rate of the cosine schedule", low=0.0)
    momentum: float = field_help(0.9, "SGD momentum", low=0.0, high=1.0)
    weight_decay: float = field_help(3e-4, "SGD weight decay", low=0.0)
    grad_clip: float = field_help(5.0, "gradient clipping (max norm) of the weights", low=0.0, low_open=True)
    # ----- architecture ----------------------------------------------------------------
    arch_learning_rate: float = field_help(3e-3, "Adam learning rate of the alphas", low=0.0)
    arch_weight_decay: float = field_help(1e-3, "Adam weight decay of the alphas", low=0.0)
    arch_beta1: float = field_help(0.9, "Adam beta1 of the alphas (DARTS: 0.5)", low=0.0, high=1.0, high_open=True)
    arch_beta2: float = field_help(0.999, "Adam beta2 of the alphas", low=0.0, high=1.0, high_open=True)
    aux_loss_weight: float = field_help(10.0, "weight of the zero-one loss (sigmoid gate only)", low=0.0)
    sep_loss: str = field_help("l2", "form of the zero-one loss", choices=SEP_LOSSES)
    unrolled: bool = field_help(False, "second-order architecture gradient (DARTS)")
    hessian: str = field_help("finite_difference", "second-order Hessian-vector product", choices=HESSIAN_MODES)
    single_level: bool = field_help(False, "step weights and alphas together on the training batch")
    # ----- derivation ------------------------------------------------------------------
    parse_method: str | None = field_help(
        None, "how a genotype is derived from the gates (default: threshold_sparse for cell, threshold for mobile)",
        choices={"cell": METHODS, "mobile": MOBILE_METHODS})
    op_threshold: float = field_help(0.85, "gate threshold of the threshold_* parse methods", low=0.0, high=1.0)
    # ----- collapse instrument (RobustDARTS) ---------------------------------------------
    hessian_every: int = field_help(
        0, "every N epochs (and after the last) log the largest eigenvalue of the Hessian of the validation loss "
           "w.r.t. all alphas (Lanczos on exact Hessian-vector products; the search is left bit-identical); 0: off",
        low=0)
    hessian_batches: int = field_help(
        1, "validation batches of the Hessian: the first N of the architecture half, fixed order", low=1)
    hessian_iters: int = field_help(20, "at most N Lanczos iterations (Hessian-vector products) per eigenvalue",
                                    low=1)
    hessian_tol: float = field_help(1e-2, "stop Lanczos when the eigenvalue's residual is below this share of the "
                                    "spectral scale", low=0.0, low_open=True)
    hessian_zero_one: bool = field_help(
        False, "include the zero-one loss (sigmoid gates, --aux_loss_weight) in the Hessian; off: cross entropy "
               "alone, as RobustDARTS")
    early_stop_eigen: bool = field_help(
        False, "stop the search by RobustDARTS' DARTS-ES rule on the eigenvalue records (needs --hessian_every; "
               "the paper records every 2 epochs) and keep the genotype of the epoch it designates")
    early_stop_window: int = field_help(5, "DARTS-ES: records in the local average of the eigenvalue", low=1)
    early_stop_delta: int = field_help(4, "DARTS-ES: compare with the local average this many records earlier",
                                       low=1)
    early_stop_factor: float = field_help(1.3, "DARTS-ES: stop when the local average grew by more than this factor",
                                          low=0.0, low_open=True)
    early_stop_start: int = field_help(10, "DARTS-ES: never return a genotype of an epoch before this one", low=0)
    # ----- run -------------------------------------------------------------------------
    seed: int = field_help(2, "random seed (weights, alphas, data split order, augmentation)", low=0, high=SEED_MAX)
    save: str | None = field_help(None, "run folder (default runs/search-<timestamp>)")
    max_steps_per_epoch: int | None = field_help(
        None, "stop each epoch (and validation) after N batches; for smoke tests and benchmarks", low=1)
    cuda_graphs: bool = field_help(
        False, "GPU: capture the whole search step as a CUDA graph and replay it (eager on the CPU, under torchrun "
               "and with --skip_nonfinite, the reason logged; not yet measured on a GPU)")
    plot_every: int = field_help(
        5, "redraw the alpha-evolution plots every N epochs and after the last one (drawing them takes "
           "seconds: every epoch, a fifth of a small CPU search)", low=1)

    def validate(self) -> None:
        resolve_primitives(self.primitives)  # raises UserError with the known ops
        space = space_of(self)
        if self.method not in space.methods:
            raise UserError(f"--parse_method {self.method} does not apply to the {space.name} space; "
                            f"use one of {', '.join(space.methods)}")
        if space.name == "mobile" and self.primitives != "fairdarts":
            raise UserError("--primitives chooses the cell space's ops; the mobile space has its own "
                            "(mb_k{3,5,7}_e{3,6}, and skip with --mobile_skip)")
        if self.unrolled and self.single_level:
            raise UserError("--unrolled and --single_level exclude each other: single level has no validation batch")
        if self.early_stop_eigen and not self.hessian_every:
            raise UserError("--early_stop_eigen needs the eigenvalue records: add --hessian_every N "
                            "(RobustDARTS: 2)")
        if self.learning_rate_min > self.learning_rate:
            raise UserError(f"--learning_rate_min ({self.learning_rate_min}) "
                            f"exceeds --learning_rate ({self.learning_rate})")
        super().validate()

    @property
    def method(self) -> str:
        """The parse method: the one given, else the search space's default."""
        return self.parse_method or space_of(self).default_method

    @property
    def early_stop_rule(self) -> DartsES | None:
        """The DARTS-ES rule with this run's parameters, or None when it is off."""
        if not self.early_stop_eigen:
            return None
        return DartsES(self.early_stop_window, self.early_stop_delta, self.early_stop_factor, self.early_stop_start)

    @property
    def zero_one_weight(self) -> float:
        """The zero-one loss is defined on sigmoid gates: softmax (DARTS) searches run without it."""
        return self.aux_loss_weight if self.gate == "sigmoid" else 0.0
