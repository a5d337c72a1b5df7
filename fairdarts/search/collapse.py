"""The collapse instrument's records and RobustDARTS' early-stopping rule (DARTS-ES).

:class:`EigenHistory` keeps one :class:`EigenRecord` per measured epoch (``--hessian_every``)
and, once the rule fired, the :class:`EarlyStop` decision; it travels in the search checkpoint
(a checkpoint without it, from before the instrument, loads as no records) and is written to
``hessian_eigen.json`` and ``plots/hessian_eigen.png``.

:class:`DartsES` is the rule of RobustDARTS (``EVLocalAvg`` in their ``src/utils.py``; defaults
from their ``args.py``): the local average of record ``k`` is the mean of the last ``window``
eigenvalue records (fewer at the start; none before ``ceil(window / 2)`` records), the average
centred on record ``k - window // 2``. After a record, the search stops when that local average
divided by the one ``delta`` records earlier exceeds ``factor``; the genotype it hands back is
the one of the epoch of record ``k - window // 2 - delta`` (with records every 2 epochs, 12
epochs before the stop), and only when that epoch is at least ``start_epoch``. Like
RobustDARTS, the rule is not applied after the run's last epoch. Records are counted, not
epochs, so a run whose instrument was switched on part way (on ``--resume``) applies it to the
records it has.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from fairdarts.run_dir import atomic_write_bytes, atomic_write_text
from fairdarts.search.hessian import EigenEstimate

EIGEN_FILE = "hessian_eigen.json"
PLOT_FILE = "hessian_eigen.png"


@dataclass(frozen=True)
class EigenRecord:
    """One measurement: the epoch (0-based) after which it was taken, and what Lanczos gave."""

    epoch: int
    largest: float
    smallest: float
    largest_magnitude: float
    iterations: int
    residual_largest: float
    residual_smallest: float
    converged: bool
    batches: int
    seconds: float

    @classmethod
    def of(cls, epoch: int, estimate: EigenEstimate, batches: int, seconds: float) -> "EigenRecord":
        return cls(epoch, estimate.largest, estimate.smallest, estimate.largest_magnitude, estimate.iterations,
                   estimate.residual_largest, estimate.residual_smallest, estimate.converged, batches, seconds)

    def describe(self) -> str:
        """The log line's words: the reported eigenvalue first, then how far it converged."""
        other = (f"; largest magnitude {self.largest_magnitude:.4e} (a negative eigenvalue is larger in size)"
                 if self.largest_magnitude != self.largest else "")
        state = "converged" if self.converged else "NOT converged (raise --hessian_iters)"
        return (f"hessian eigenvalue {self.largest:.4e} (largest algebraic; smallest {self.smallest:.4e}{other}), "
                f"{self.iterations} Lanczos iterations, residual {self.residual_largest:.1e} {state}, "
                f"{self.batches} batches, {self.seconds:.1f} s")


@dataclass(frozen=True)
class EarlyStop:
    """A firing of the rule: after which epoch the search stops and whose genotype it keeps."""

    stopped_after: int        # the epoch whose record fired the rule
    genotype_epoch: int       # the epoch the rule designates
    ratio: float              # current local average / the one delta records earlier
    local_average: float
    previous_average: float

    def describe(self, factor: float, delta: int) -> str:
        return (f"early stop (DARTS-ES): the local average of the Hessian eigenvalue rose from "
                f"{self.previous_average:.4e} to {self.local_average:.4e} (x{self.ratio:.3f} > {factor} over {delta} "
                f"records); the search stops after epoch {self.stopped_after} and returns the genotype of epoch "
                f"{self.genotype_epoch}")


@dataclass(frozen=True)
class DartsES:
    """RobustDARTS' DARTS-ES rule with their defaults (see the module doc)."""

    window: int = 5
    delta: int = 4
    factor: float = 1.3
    start_epoch: int = 10

    def local_average(self, values: Sequence[float], k: int) -> float | None:
        """Mean of the records up to ``k`` in the last ``window``; None before ``ceil(window/2)`` records."""
        if k + 1 < math.ceil(self.window / 2):
            return None
        recent = values[max(0, k - self.window + 1):k + 1]
        return sum(recent) / len(recent)

    def check(self, epochs: Sequence[int], values: Sequence[float]) -> EarlyStop | None:
        """The decision after the latest record (``epochs[-1]``), or None."""
        k = len(values) - 1
        designated = k - self.window // 2 - self.delta
        if designated < 0 or epochs[designated] < self.start_epoch:
            return None
        current, previous = self.local_average(values, k), self.local_average(values, k - self.delta)
        if current is None or previous is None or previous <= 0:
            return None
        ratio = current / previous
        if ratio <= self.factor:
            return None
        return EarlyStop(int(epochs[-1]), int(epochs[designated]), ratio, current, previous)


@dataclass
class EigenHistory:
    """Every eigenvalue record of a run and the early stop, if the rule fired."""

    records: list[EigenRecord] = field(default_factory=list)
    stop: EarlyStop | None = None

    @property
    def epochs(self) -> list[int]:
        return [r.epoch for r in self.records]

    @property
    def values(self) -> list[float]:
        """The reported eigenvalue (largest algebraic) of every record."""
        return [r.largest for r in self.records]

    def state_dict(self) -> dict[str, Any]:
        """Plain types only: loadable with ``weights_only=True``."""
        return {"records": [dataclasses.asdict(r) for r in self.records],
                "stop": dataclasses.asdict(self.stop) if self.stop else None}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any] | None) -> "EigenHistory":
        """``None`` (a checkpoint from before the instrument): no records."""
        if state is None:
            return cls()
        stop = state.get("stop")
        return cls([EigenRecord(**r) for r in state["records"]], EarlyStop(**stop) if stop else None)

    def save_json(self, path: Path, rule: DartsES | None) -> None:
        """``hessian_eigen.json``: what was measured, the records, the rule and its decision."""
        doc = {"measures": "largest algebraic eigenvalue of the Hessian of the validation loss w.r.t. all "
                           "architecture parameters (RobustDARTS); 'largest_magnitude' is the eigenvalue of "
                           "largest size, which differs when a negative one is larger",
               "records": [dataclasses.asdict(r) for r in self.records],
               "early_stop_rule": dataclasses.asdict(rule) if rule else None,
               "early_stop": dataclasses.asdict(self.stop) if self.stop else None}
        atomic_write_text(path, json.dumps(doc, indent=1) + "\n")

    def plot(self, path: Path, rule: DartsES | None, title: str) -> Path:
        """The eigenvalue per epoch, its local average (with a rule) and the early stop, if any."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3.6), dpi=100, layout="constrained")
        ax = fig.subplots()
        marker = "o" if len(self.records) < 30 else None
        ax.plot(self.epochs, self.values, marker=marker, markersize=3, label="largest eigenvalue")
        ax.plot(self.epochs, [r.smallest for r in self.records], linestyle=":", color="grey",
                label="smallest eigenvalue")
        if rule is not None:
            averages = [rule.local_average(self.values, k) for k in range(len(self.records))]
            shown = [(e, a) for e, a in zip(self.epochs, averages) if a is not None]
            if shown:
                ax.plot(*zip(*shown), linestyle="--", label=f"local average ({rule.window} records)")
        if self.stop is not None:
            ax.axvline(self.stop.stopped_after, color="tab:red", label="early stop")
            ax.axvline(self.stop.genotype_epoch, color="tab:green", linestyle="--", label="genotype kept")
        ax.set_xlabel("epoch")
        ax.set_ylabel("eigenvalue")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        fig.clear()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
        return path
