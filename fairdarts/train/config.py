"""Every default of the retraining, in one place: the official ``train.py`` flags and values.

CIFAR (DARTS / Fair DARTS ``train.py``) and ImageNet (DARTS ``train_imagenet.py``) differ in
ten settings. Those fields default to ``None`` here and :meth:`TrainConfig.resolved` fills them
from :data:`DATASET_DEFAULTS` for the chosen ``--dataset``; a flag or a YAML value always wins.
A mobile genotype (search space S2, e.g. ``--arch FairNAS_A``) selects the ``mobile`` family:
ImageNet settings for MobileNetV2-like networks (SGD, global batch 256 with learning rate 0.1,
to be scaled linearly with the batch; 5 warm-up epochs then cosine; label smoothing 0.1; weight
decay 4e-5; head dropout 0.2; no auxiliary head, no drop path; 250 epochs).

Unlike the official code, where ``--auxiliary`` and ``--cutout`` are off unless given, the
published CIFAR setting is the default here: auxiliary head (weight 0.4) on, cutout 16 on
(``--no-auxiliary`` / ``--no-cutout`` turn them off). Cutout acts on the in-memory datasets
only; ImageNet / folder images take their transforms from :mod:`fairdarts.data`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairdarts.config import SEED_MAX, field_help
from fairdarts.data import DATASET_CHOICES
from fairdarts.errors import UserError
from fairdarts.run_config import RunConfig
from fairdarts.search_space import METHODS, MOBILE_METHODS, MobileGenotype, get_genotype
from fairdarts.search_space.topology import MAX_LAYERS

SCHEDULES = ("cosine", "exponential")
FAMILIES = ("cifar", "imagenet", "mobile")

#: Published settings per network family (``--network imagenet`` also picks them for a 'folder' tree).
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar": dict(epochs=600, batch_size=96, learning_rate=0.025, weight_decay=3e-4, init_channels=36,
                  layers=20, drop_path_prob=0.2, label_smoothing=0.0, lr_schedule="cosine", warmup_epochs=0),
    "imagenet": dict(epochs=250, batch_size=128, learning_rate=0.1, weight_decay=3e-5, init_channels=48,
                     layers=14, drop_path_prob=0.0, label_smoothing=0.1, lr_schedule="exponential", warmup_epochs=0),
    # Mobile networks have no cells: init_channels / layers stay unset (width: --width_mult).
    "mobile": dict(epochs=250, batch_size=256, learning_rate=0.1, weight_decay=4e-5, drop_path_prob=0.0,
                   label_smoothing=0.1, lr_schedule="cosine", warmup_epochs=5),
}


@dataclass
class TrainConfig(RunConfig):
    # ----- data (the other data and run fields: RunConfig) ------------------------------
    dataset: str = field_help("cifar10", "dataset; 'imagenet' also switches to the ImageNet network and defaults",
                              choices=DATASET_CHOICES)
    network: str | None = field_help(
        None, "network family: cifar, imagenet (stride-8 stem, ImageNet defaults) or mobile (S2 genotypes); "
              "default: mobile for a mobile genotype, else by --dataset", choices=FAMILIES)
    cutout: bool = field_help(True, "cutout on training images (in-memory datasets; the published CIFAR setting)")
    auto_aug: bool = field_help(False, "AutoAugment CIFAR-10 policy on training images")
    augment: bool = field_help(True, "random crop and flip on training images (--no-augment for exactness tests)")
    workers: int = field_help(4, "DataLoader workers (only for on-disk datasets such as imagenet / folder)", low=0)
    test_subset: int | None = field_help(
        None, "evaluate on the first N test images only (default: the whole test set, as the official code)", low=1)
    # ----- network ---------------------------------------------------------------------
    arch: str = field_help("FairDARTS_a", "genotype: a name, a genotype JSON file, Genotype(...) text "
                                          "or a search run folder")
    parse_method: str | None = field_help(
        None, "with --arch RUN_FOLDER: re-derive the genotype from its gate weights with this method "
              "(default: the run's genotype.json)", choices={"cell run": METHODS, "mobile run": MOBILE_METHODS})
    op_threshold: float = field_help(0.85, "gate threshold when --parse_method re-derives a threshold_* genotype",
                                     low=0.0, high=1.0)
    init_channels: int | None = field_help(None, "channels of the first cell (default 36 CIFAR, 48 ImageNet)", low=1)
    layers: int | None = field_help(None, "number of cells (default 20 CIFAR, 14 ImageNet)", low=3, high=MAX_LAYERS)
    auxiliary: bool = field_help(True, "auxiliary head at 2/3 depth (the published setting)")
    auxiliary_weight: float = field_help(0.4, "weight of the auxiliary loss", low=0.0)
    drop_path_prob: float | None = field_help(
        None, "drop path probability, ramped linearly by epoch/epochs (default 0.2 CIFAR, 0 ImageNet and mobile)",
        low=0.0, high=1.0, high_open=True)
    width_mult: float = field_help(1.0, "channel width multiplier of a mobile network", low=0.0, low_open=True)
    dropout: float = field_help(0.2, "dropout before the classifier of a mobile network", low=0.0, high=1.0,
                                high_open=True)
    # ----- optimisation ----------------------------------------------------------------
    epochs: int | None = field_help(None, "training epochs (default 600 CIFAR, 250 ImageNet and mobile)", low=1)
    batch_size: int | None = field_help(
        None, "GLOBAL batch size, split over torchrun ranks (default 96 / 128 / 256 mobile)", low=1)
    learning_rate: float | None = field_help(
        None, "initial SGD learning rate (default 0.025 CIFAR, 0.1 ImageNet and mobile)", low=0.0)
    learning_rate_min: float = field_help(0.0, "final learning rate of the cosine schedule", low=0.0)
    lr_schedule: str | None = field_help(None, "cosine, or exponential: lr * gamma per epoch (default cosine CIFAR "
                                         "and mobile, exponential ImageNet)",
                                         choices=SCHEDULES)
    warmup_epochs: int | None = field_help(None, "epochs of linear learning-rate warm-up before the schedule "
                                           "(default 0, 5 for mobile)", low=0)
    gamma: float = field_help(0.97, "per-epoch decay of the exponential schedule", low=0.0, high=1.0, low_open=True)
    momentum: float = field_help(0.9, "SGD momentum", low=0.0, high=1.0)
    weight_decay: float | None = field_help(
        None, "SGD weight decay (default 3e-4 CIFAR, 3e-5 ImageNet, 4e-5 mobile)", low=0.0)
    label_smoothing: float | None = field_help(None, "label smoothing (default 0 CIFAR, 0.1 ImageNet and mobile)",
                                               low=0.0, high=1.0, high_open=True)
    grad_clip: float = field_help(5.0, "gradient clipping (max norm); 0 turns it off", low=0.0)
    accum_steps: int = field_help(1, "split each batch into N micro-batches and accumulate their gradients", low=1)
    # ----- speed -----------------------------------------------------------------------
    amp: bool = field_help(False, "mixed precision on CUDA")
    amp_dtype: str = field_help("bf16", "autocast dtype of --amp (fp16 uses a GradScaler)", choices=("bf16", "fp16"))
    channels_last: bool = field_help(False, "channels-last memory format")
    compile: bool = field_help(False, "torch.compile the network")
    sync_bn: bool = field_help(False, "SyncBatchNorm across torchrun ranks (CUDA only)")
    # ----- run -------------------------------------------------------------------------
    seed: int = field_help(0, "random seed (weights, data order, augmentation, drop path)", low=0, high=SEED_MAX)
    save: str | None = field_help(None, "run folder (default runs/train-<timestamp>)")
    eval_every: int = field_help(1, "test-set pass every N epochs and after the last one; model_best.pt is chosen "
                                    "among those (1: every epoch, the official behaviour)", low=1)

    @property
    def family(self) -> str:
        """``mobile`` (a mobile genotype), ``imagenet`` (stride-8 network, ImageNet defaults) or ``cifar``."""
        if self.network is not None:
            return self.network
        if self._mobile_arch():
            return "mobile"
        return "imagenet" if self.dataset == "imagenet" else "cifar"

    def _mobile_arch(self) -> bool:
        """Whether ``--arch`` is a mobile genotype. A run folder re-derived with ``--parse_method``
        is one when it holds mobile gate values: it may have no ``genotype.json`` yet (a search
        still running, or killed), and its genotype comes from the gates anyway."""
        folder = Path(self.arch)
        if self.parse_method is not None and folder.is_dir():
            return (folder / "mobile_weight.npy").is_file()
        return isinstance(get_genotype(self.arch), MobileGenotype)

    def resolved(self) -> "TrainConfig":
        """A copy whose dataset-dependent fields hold the published value when left unset."""
        family = self.family
        mobile = self._mobile_arch()
        if mobile != (family == "mobile"):
            why = "mobile genotypes build mobile networks" if mobile else "mobile networks need a mobile genotype"
            raise UserError(f"--network {family} does not fit --arch {self.arch}: {why}")
        if mobile and (self.init_channels is not None or self.layers is not None):
            raise UserError("--init_channels and --layers size cell networks; "
                            "a mobile network is sized by --width_mult")
        defaults = DATASET_DEFAULTS[family]
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, network=family, **filled)

    def validate(self) -> None:
        super().validate()
        if self.parse_method is not None and self.op_threshold is None:
            raise UserError("--parse_method needs --op_threshold")
        if self.batch_size is not None and self.batch_size % self.accum_steps:
            raise UserError(f"--batch_size {self.batch_size} is not divisible by --accum_steps {self.accum_steps}")
        lr = self.learning_rate if self.learning_rate is not None else 0.0
        if self.lr_schedule in (None, "cosine") and self.learning_rate is not None and self.learning_rate_min > lr:
            raise UserError(f"--learning_rate_min ({self.learning_rate_min}) exceeds --learning_rate ({lr})")
