"""The tiny runs the faults suite kills, fills the disk of and poisons: flags and final states."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fairdarts.checkpoint import load_checkpoint

EPOCHS = 3
STEPS = 2  # training steps per epoch, and validation batches per epoch
TINY_DATA = ["--dataset", "synthetic", "--image_size", "8", "--batch_size", "8", "--seed", "3", "--device", "cpu",
             "--report_freq", "1000", "--no-progress", "--max_steps_per_epoch", str(STEPS)]
TINY_SEARCH = [*TINY_DATA, "--subset", str(2 * 8 * STEPS), "--init_channels", "4", "--layers", "3",
               "--op_threshold", "0.5"]


@dataclass(frozen=True)
class Kind:
    """One entry point in one configuration."""
    name: str
    entry: str
    flags: tuple[str, ...]
    state_key: str  # the weights (and, in a search, the alphas) in its checkpoint

    def argv(self, run: Path, epochs: int = EPOCHS, *extra: str) -> list[str]:
        return [*self.flags, "--epochs", str(epochs), "--save", str(run), *extra]

    def final(self, run: Path) -> tuple[dict[str, torch.Tensor], Any]:
        """The final weights (alphas included) and genotype of a finished run."""
        state = load_checkpoint(run / "checkpoint.pt")
        genotype = (run / "genotype.json").read_text() if self.entry == "train_search.py" else state["genotype"]
        return state[self.state_key], genotype


FAIR_DARTS = Kind("search-fairdarts-first-order", "train_search.py", tuple(TINY_SEARCH), "model")
DARTS_SECOND_ORDER = Kind("search-darts-second-order", "train_search.py",
                          (*TINY_SEARCH, "--gate", "softmax", "--primitives", "darts", "--unrolled"), "model")
RETRAIN = Kind("train", "train.py", (*TINY_DATA, "--subset", str(8 * STEPS), "--init_channels", "4", "--layers", "3",
                                     "--arch", "FairDARTS_a", "--drop_path_prob", "0.2"), "state_dict")
MOBILE_SEARCH = Kind("search-s2-mobile", "train_search.py",
                     (*TINY_DATA, "--subset", str(2 * 8 * STEPS), "--search_space", "mobile", "--width_mult", "0.25",
                      "--op_threshold", "0.5"), "model")
KINDS = (FAIR_DARTS, DARTS_SECOND_ORDER, RETRAIN, MOBILE_SEARCH)

#: The ``reference`` fixture: a kind's uninterrupted run folder and how long it took.
ReferenceRuns = Callable[[Kind], tuple[Path, float]]
