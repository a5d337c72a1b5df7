"""The options of ``darts/train_search.py``: the search's own config with the original DARTS
defaults (softmax gate, the 8 ops with ``none``, the DARTS optimizer values of
``configs/search_darts_first_order.yaml`` and ``../shared/paper_facts.md``) plus the ablation flags.

Every search flag keeps its meaning (the class extends :class:`fairdarts.search.config.SearchConfig`,
it copies nothing); only the defaults below differ.
"""
from __future__ import annotations

from dataclasses import dataclass

from fairdarts.config import field_help
from fairdarts.errors import UserError
from fairdarts.search.config import SearchConfig
from fairdarts.search_space import GATES

NOISE_TYPES = ("N", "U")
NOISE_SCHEDULERS = ("cosine", "step")


@dataclass
class DartsSearchConfig(SearchConfig):
    # ----- original DARTS defaults (darts cnn/train_search.py) ------------------------------
    primitives: str = field_help("darts", "candidate ops: 'darts' (8 ops with none), 'fairdarts' (7) or a comma list")
    gate: str = field_help("softmax", "softmax (DARTS) or sigmoid (Fair DARTS gates)", choices=GATES)
    alpha_init: str = field_help("randn", "alpha init: randn (1e-3 N(0,1), DARTS), zeros, or auto (by gate)",
                                 choices=("auto", "zeros", "randn"))
    batch_size: int = field_help(64, "GLOBAL batch size of weight and architecture batches", low=1)
    learning_rate: float = field_help(0.025, "initial SGD learning rate of the weights", low=0.0)
    arch_learning_rate: float = field_help(3e-4, "Adam learning rate of the alphas", low=0.0)
    arch_beta1: float = field_help(0.5, "Adam beta1 of the alphas", low=0.0, high=1.0, high_open=True)
    aux_loss_weight: float = field_help(0.0, "weight of the zero-one loss (sigmoid gate only; DARTS: 0)", low=0.0)
    parse_method: str = field_help("darts", "how a genotype is derived: darts (2 strongest edges per node, "
                                   "strongest op, never none) or the Fair DARTS thresholds",
                                   choices=("darts", "threshold_sparse", "threshold_edge"))
    # ----- noise on skip connections --------------------------------------------------------
    noise_darts: bool = field_help(False, "add noise to the stride-1 skip connections during training")
    noise_type: str = field_help("N", "noise: N (Gaussian N(0,1)) or U (uniform integers in [-3, 3))",
                                 choices=NOISE_TYPES)
    noise_scheduler: str = field_help("cosine", "decay of the noise scale from 1 to 0", choices=NOISE_SCHEDULERS)
    max_step: int = field_help(30, "epochs over which the noise scale decays to 0 (then stays 0)", low=1)
    # ----- random search --------------------------------------------------------------------
    random_search: bool = field_help(False, "random-search baseline instead of a gradient search")
    num_identity: int = field_help(2, "skip connections the normal cell of a kept genotype must have", low=0, high=8)
    num_arch: int = field_help(8, "genotypes to collect", low=1)
    flops_threshold: float = field_help(500.0, "minimum MFLOPs of a kept genotype at 36 channels, 20 layers", low=0.0)
    max_tries: int = field_help(5000, "random samples before the random search gives up", low=1)
    train_random_epochs: int = field_help(0, "train each kept genotype this many epochs (at --init_channels, "
                                          "--layers) and rank them by validation accuracy; 0: no training", low=0)
    # ----- reweight ---------------------------------------------------------------------------
    reweight: bool = field_help(False, "write the derived genotype in reweight form [op, from, weight]")

    def validate(self) -> None:
        """The search's checks, plus the combinations the ablations cannot run (one line each)."""
        if self.search_space not in ("cell", "s1"):
            raise UserError("the DARTS ablations run on the cell search space; "
                            "use train_search.py for --search_space mobile")
        super().validate()
        if self.reweight and self.parse_method != "darts":
            raise UserError(f"--reweight needs --parse_method darts (two inputs per node), got {self.parse_method}")
        if self.random_search and self.resume:
            raise UserError("--random_search cannot be resumed; start it again (it is seeded by --seed)")
        if self.random_search and (self.noise_darts or self.reweight or self.unrolled):
            raise UserError("--random_search trains no supernet: drop --noise_darts, --reweight and --unrolled")
