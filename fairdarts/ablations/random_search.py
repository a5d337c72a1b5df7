"""Random search baseline: random alphas -> DARTS genotype, kept under the ablation's rules.

A genotype is kept when its normal cell has exactly ``num_identity`` skip connections and its
full-size network (36 channels, 20 layers, CIFAR) reaches ``flops_threshold`` MFLOPs. The FLOPs
are counted from the genotype (:func:`fairdarts.search_space.cost.network_cost`, thop's numbers
in about a millisecond) instead of building and profiling each network, so hundreds of samples take
seconds. The search gives up after ``max_tries`` samples so an impossible request ends with a
message.
"""
from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from fairdarts import build_network
from fairdarts.ablations.config import DartsSearchConfig
from fairdarts.checkpoint_schema import CANDIDATE
from fairdarts.distributed import DistContext, init_distributed
from fairdarts.errors import UserError, counted
from fairdarts.reproducibility import capture_rng_state
from fairdarts.resume import open_run, write_run_config
from fairdarts.run_dir import atomic_write_text
from fairdarts.runner import EpochRun, Scheduler, load_optimizer, replay_schedule
from fairdarts.search.searcher import SearchData, build_data
from fairdarts.search_space import DARTS_PRIMITIVES, Genotype, derive, genotypes_with_edges
from fairdarts.search_space.cost import network_cost
from fairdarts.search_space.topology import STEPS, max_identity_edges, num_edges

Log = Callable[[str], Any]


@dataclass(frozen=True)
class Candidate:
    """A kept genotype with its FLOPs and parameters (no auxiliary head) at the filter's size."""

    genotype: Genotype
    flops: int
    params: int
    tries: int


def sample_genotype(generator: torch.Generator, primitives: tuple[str, ...] = DARTS_PRIMITIVES,
                    steps: int = STEPS) -> Genotype:
    """Random alphas (1e-3 * randn, the DARTS init), softmax, DARTS derivation."""
    shape = (num_edges(steps), len(primitives))
    cells = [torch.softmax(1e-3 * torch.randn(shape, generator=generator), dim=-1) for _ in range(2)]
    edges = [derive(w.numpy(), primitives, "darts", steps=steps) for w in cells]
    return genotypes_with_edges(edges[0], edges[1], "darts", steps)


def random_search(num_identity: int = 2, num_arch: int = 8, flops_threshold: float = 500.0,
                  seed: int = 0, max_tries: int = 5000, init_channels: int = 36, layers: int = 20,
                  log: Log = print, steps: int = STEPS) -> list[Candidate]:
    """Collect ``num_arch`` distinct genotypes satisfying the skip count and FLOPs rules."""
    most = max_identity_edges(steps)
    if num_identity < 0 or num_identity > most or num_arch < 1 or flops_threshold < 0:
        raise UserError(f"random search needs 0 <= num_identity <= {most}, num_arch >= 1, flops_threshold >= 0; "
                        f"got {num_identity}, {num_arch}, {flops_threshold}")
    generator = torch.Generator().manual_seed(seed)
    kept: list[Candidate] = []
    seen: set[str] = set()
    for tries in range(1, max_tries + 1):
        g = sample_genotype(generator, steps=steps)
        text = g.to_text()
        if g.count_op("skip_connect") != num_identity or text in seen:
            continue
        seen.add(text)
        cost = network_cost(g, init_channels, layers)
        if cost.flops < flops_threshold * 1e6:
            continue
        kept.append(Candidate(g, cost.flops, cost.params_no_aux, tries))
        log(f"kept genotype {len(kept)}/{num_arch} after {tries} samples: "
            f"{cost.flops / 1e6:.1f}M FLOPs, {cost.params_no_aux / 1e6:.2f}M params")
        if len(kept) == num_arch:
            return kept
    raise UserError(f"random search found only {len(kept)} of {num_arch} genotypes with {num_identity} skip "
                    f"connections and >= {flops_threshold}M FLOPs in {max_tries} samples; lower "
                    f"--flops_threshold, change --num_identity or raise --max_tries")


# ----- the --random_search command ---------------------------------------------------------
def write_candidates(run_dir: str | Path, candidates: list[Candidate], ranking: list[dict] | None = None) -> None:
    """``random_genotypes.json`` (genotypes with FLOPs/params) and ``random_genotypes.txt``
    (the official ``Genotype(...)`` text), plus ``random/arch_XX.json`` for ``--arch``."""
    run_dir = Path(run_dir)
    (run_dir / "random").mkdir(parents=True, exist_ok=True)
    entries, lines = [], []
    for i, c in enumerate(candidates):
        entry = {"name": f"arch_{i:02d}", "flops": c.flops, "params": c.params, "tries": c.tries,
                 "genotype": c.genotype.to_dict()}
        if ranking is not None:
            entry.update(next(r for r in ranking if r["name"] == entry["name"]))
        entries.append(entry)
        atomic_write_text(run_dir / "random" / f"arch_{i:02d}.json", c.genotype.to_json() + "\n")
        extra = f" valid_acc {entry['valid_acc']:.2f} rank {entry['rank']}" if ranking is not None else ""
        lines.append(f"# arch_{i:02d}: {c.flops / 1e6:.1f}M FLOPs, {c.params / 1e6:.2f}M params "
                     f"(36 channels, 20 layers, no aux){extra}\n{c.genotype.to_text()}")
    atomic_write_text(run_dir / "random_genotypes.json", json.dumps(entries, indent=1) + "\n")
    atomic_write_text(run_dir / "random_genotypes.txt", "\n".join(lines) + "\n")


CANDIDATE_FORMAT = "fairdarts-random-candidate/1"


def _constant(epoch: int) -> float:
    """The random search trains at ``--learning_rate`` throughout (the DARTS baseline has no schedule)."""
    return 1.0


class CandidateTraining(EpochRun[DartsSearchConfig]):
    """One kept genotype trained ``cfg.train_random_epochs`` epochs on the weight half, scored on
    the architecture half; through :class:`EpochRun` so it checkpoints (``RUN/random/arch_XX/``)
    and resumes like the search and the retraining instead of keeping a loop of its own."""

    checkpoint_format = CANDIDATE_FORMAT
    checkpoint_schema = CANDIDATE
    checkpoint_kind = "a random-search candidate checkpoint"
    model_name = "this candidate's network"

    def __init__(self, cfg: DartsSearchConfig, genotype: Genotype, data: SearchData, run_dir: Path,
                 dist: DistContext, logger: logging.Logger):
        run_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(cfg, cfg.train_random_epochs, run_dir, dist, logger)  # seeds before the weights exist
        self.genotype, self.data = genotype, data
        self.net = build_network(genotype, cfg.init_channels, cfg.layers, data.num_classes,
                                 in_channels=data.in_channels, image_size=cfg.image_size or 32).to(dist.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), cfg.learning_rate, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)

    def make_scheduler(self, start_epoch: int) -> Scheduler:
        """A constant ``--learning_rate`` (factor 1.0: the same floats as plain SGD)."""
        return replay_schedule(self.optimizer, self.cfg.learning_rate,
                               lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, _constant), start_epoch)

    def run_epoch(self, epoch: int, scheduler: Scheduler) -> None:
        """SGD over the weight half (at most ``--max_steps_per_epoch`` batches), then a checkpoint."""
        self.data.train.set_epoch(epoch)
        self.net.train()
        total = steps = 0.0
        for x, y in itertools.islice(self.data.train, self.cfg.max_steps_per_epoch):
            self.optimizer.zero_grad(set_to_none=True)
            logits, _ = self.net(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        scheduler.step()
        self.writer.add_scalar("train/loss", total / max(steps, 1), epoch)
        if self.dist.is_main:
            self.save_checkpoint(epoch + 1)

    def finish(self) -> float:
        """Top-1 accuracy (%) on the architecture half, the search's validation data."""
        self.net.eval()
        correct = n = 0
        with torch.no_grad():
            for x, y in itertools.islice(self.data.valid, self.cfg.max_steps_per_epoch):
                correct += int((self.net(x)[0].argmax(1) == y).sum())
                n += len(y)
        return 100.0 * correct / max(n, 1)

    def state_dict(self, epochs_done: int, *args: Any) -> dict[str, Any]:
        return {"format": CANDIDATE_FORMAT, "epoch": epochs_done, "genotype": self.genotype.to_dict(),
                "state_dict": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": capture_rng_state()}

    def load_modules(self, state: dict[str, Any]) -> None:
        if state["genotype"] != self.genotype.to_dict():
            raise ValueError("the checkpoint holds another genotype")
        self.net.load_state_dict(state["state_dict"])
        load_optimizer(self.optimizer, state["optimizer"], "optimizer")

    def load_progress(self, state: dict[str, Any]) -> None:
        """Nothing beyond the epoch: the data order is a function of (seed, epoch)."""


def train_and_rank(candidates: list[Candidate], cfg: DartsSearchConfig, data: SearchData, run_dir: Path,
                   dist: DistContext, logger: logging.Logger) -> list[dict]:
    """Train each genotype at ``--init_channels``/``--layers`` (:class:`CandidateTraining`, in
    ``run_dir/random/arch_XX/``), measure it on the other half; rank 1 = best validation accuracy."""
    results = []
    for i, c in enumerate(candidates):
        name = f"arch_{i:02d}"
        acc = CandidateTraining(cfg, c.genotype, data, Path(run_dir) / "random" / name, dist, logger).run()
        logger.info("%s: valid_acc %.2f after %s", name, acc, counted(cfg.train_random_epochs, "epoch"))
        results.append({"name": name, "valid_acc": acc})
    for rank, r in enumerate(sorted(results, key=lambda r: -r["valid_acc"]), 1):
        r["rank"] = rank
    return results


def run_random_search(cfg: DartsSearchConfig) -> int:
    """``darts/train_search.py --random_search``: sample, keep, write (and optionally train and rank)."""
    dist = init_distributed(cfg.device)
    data = build_data(cfg, dist) if cfg.train_random_epochs else None  # missing data fails before the folder
    with open_run(cfg, "random_search", None, dist) as (cfg, run_dir, logger):
        write_run_config(cfg, run_dir, dist)
        return _random_search_run(cfg, run_dir, data, dist, logger)


def _random_search_run(cfg: DartsSearchConfig, run_dir: Path, data: SearchData | None, dist: DistContext,
                       logger: logging.Logger) -> int:
    """Sample, keep, optionally train and rank, write: the run inside its opened folder."""
    logger.info("random search: %d genotypes with %d skip connections in the normal cell and >= %sM FLOPs "
                "(36 channels, 20 layers), at most %d samples, seed %d", cfg.num_arch, cfg.num_identity,
                cfg.flops_threshold, cfg.max_tries, cfg.seed)
    kept = random_search(cfg.num_identity, cfg.num_arch, cfg.flops_threshold, cfg.seed, cfg.max_tries,
                         log=logger.info)
    ranking = train_and_rank(kept, cfg, data, run_dir, dist, logger) if data is not None else None
    write_candidates(run_dir, kept, ranking)
    if ranking is not None:
        best = min(ranking, key=lambda r: r["rank"])
        logger.info("best: %s (valid_acc %.2f)", best["name"], best["valid_acc"])
    logger.info("wrote %s and %s", run_dir / "random_genotypes.json", run_dir / "random_genotypes.txt")
    return 0
