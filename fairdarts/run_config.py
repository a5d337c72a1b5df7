"""The options every run command has: data, run folder, devices and logging.

:class:`RunConfig` is the base of :class:`fairdarts.search.config.SearchConfig` (and through it
of the ``darts/`` ablations) and :class:`fairdarts.train.config.TrainConfig`; each redefines a
field whose default, help, range or choices differ for it (a dataclass redefinition keeps the
field's place). :func:`fairdarts.resume.resume_config` and :mod:`fairdarts.runner` take any
``RunConfig``: the fields they read are declared here once.
"""
from __future__ import annotations

from dataclasses import dataclass

from fairdarts.config import SEED_MAX, field_help
from fairdarts.data import DATASET_CHOICES
from fairdarts.errors import UserError
from fairdarts.threads import HELP as THREADS_HELP

#: Flags that may change when a run is resumed: none of them alters what the run computes.
RESUME_OVERRIDABLE: frozenset[str] = frozenset(
    {"resume", "epochs", "report_freq", "workers", "device", "download", "data", "progress", "skip_nonfinite",
     "threads"})


@dataclass
class RunConfig:
    # ----- data ------------------------------------------------------------------------
    data: str = field_help("data", "dataset root (torchvision on-disk layout; an ImageFolder tree for 'folder')")
    dataset: str = field_help("cifar10", "dataset", choices=DATASET_CHOICES)
    download: bool = field_help(False, "download the dataset into --data if it is missing")
    subset: int | None = field_help(None, "use only the first N training images (CPU runs, smoke tests)", low=1)
    image_size: int | None = field_help(None, "resize images to this many pixels (default: the dataset's own)", low=4)
    cutout: bool = field_help(False, "cutout on training images")
    cutout_length: int | None = field_help(
        None, "side of the cutout square in px (default: half the image side, the log says it: 16 at 32 px as "
              "DARTS, 8 at 16 px); a side as large as the image is warned about", low=1)
    workers: int = field_help(2, "DataLoader workers (only for on-disk datasets such as 'folder')", low=0)
    # ----- run -------------------------------------------------------------------------
    seed: int = field_help(0, "random seed", low=0, high=SEED_MAX)
    save: str | None = field_help(None, "run folder (default runs/<kind>-<timestamp>)")
    resume: str | None = field_help(None, "continue a killed run: its folder or checkpoint.pt")
    device: str = field_help("auto", "auto, cpu, cuda or cuda:N")
    threads: int | None = field_help(None, THREADS_HELP, low=1)
    report_freq: int = field_help(50, "log every N steps", low=1)
    max_steps_per_epoch: int | None = field_help(
        None, "stop each epoch (and evaluation) after N batches; for smoke tests and benchmarks", low=1)
    progress: bool = field_help(True, "progress bar per epoch when stderr is a terminal")
    skip_nonfinite: bool = field_help(False, "skip a step whose loss is inf or nan instead of stopping the run")

    def validate(self) -> None:
        """The checks every run command makes; a subclass calls it from its own ``validate``."""
        if self.dataset == "folder" and self.download:
            raise UserError("--download is not available for --dataset folder; point --data at an ImageFolder tree")
