"""Random search baseline: random alphas -> DARTS genotype, kept under the ablation's rules.

A genotype is kept when its normal cell has exactly ``num_identity`` skip connections and its
full-size network (36 channels, 20 layers, CIFAR) reaches ``flops_threshold`` MFLOPs. The
search gives up after ``max_tries`` samples so an impossible request ends with a message.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fairdarts import build_network, count_flops_params
from fairdarts.errors import UserError
from fairdarts.search_space import DARTS_PRIMITIVES, Genotype, derive, genotypes_with_edges
from fairdarts.search_space.supernet import num_edges


@dataclass(frozen=True)
class Candidate:
    genotype: Genotype
    flops: int
    params: int
    tries: int


def sample_genotype(generator: torch.Generator, primitives: tuple[str, ...] = DARTS_PRIMITIVES,
                    steps: int = 4) -> Genotype:
    """Random alphas (1e-3 * randn, the DARTS init), softmax, DARTS derivation."""
    shape = (num_edges(steps), len(primitives))
    cells = [torch.softmax(1e-3 * torch.randn(shape, generator=generator), dim=-1) for _ in range(2)]
    edges = [derive(w.numpy(), primitives, "darts", steps=steps) for w in cells]
    return genotypes_with_edges(edges[0], edges[1], "darts", steps)


def random_search(num_identity: int = 2, num_arch: int = 8, flops_threshold: float = 500.0,
                  seed: int = 0, max_tries: int = 5000, init_channels: int = 36, layers: int = 20,
                  log=print) -> list[Candidate]:
    """Collect ``num_arch`` distinct genotypes satisfying the skip count and FLOPs rules."""
    if num_identity < 0 or num_identity > 2 * 4 or num_arch < 1 or flops_threshold < 0:
        raise UserError(f"random search needs 0 <= num_identity <= 8, num_arch >= 1, flops_threshold >= 0; "
                        f"got {num_identity}, {num_arch}, {flops_threshold}")
    generator = torch.Generator().manual_seed(seed)
    kept: list[Candidate] = []
    seen: set[str] = set()
    for tries in range(1, max_tries + 1):
        g = sample_genotype(generator)
        text = g.to_text()
        if g.count_op("skip_connect") != num_identity or text in seen:
            continue
        seen.add(text)
        cost = count_flops_params(build_network(g, init_channels, layers), (1, 3, 32, 32))
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
