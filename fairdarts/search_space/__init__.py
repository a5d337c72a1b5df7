"""The search space shared by search, retraining, evaluation and the ablations."""
from fairdarts.search_space.derivation import METHODS, derive, derived_form, empty_cell_advice
from fairdarts.search_space.genotypes import (
    Edge, Genotype, genotype_from_dict, genotypes_with_edges, get_genotype, make_genotype,
    parse_genotype_text, registered_names,
)
from fairdarts.search_space.mobile import MobileNetwork, MobileSupernet, mobile_primitives
from fairdarts.search_space.mobile_genotype import (
    MOBILE_METHODS, MOBILE_OPS, MobileGenotype, derive_mobile, make_mobile_genotype,
)
from fairdarts.search_space import network_spec, topology
from fairdarts.search_space.network_spec import NetworkSpec, build_network
from fairdarts.search_space.networks import NetworkCIFAR, NetworkImageNet, drop_path
from fairdarts.search_space.operations import (
    DARTS_PRIMITIVES, FAIRDARTS_PRIMITIVES, OPS, PRIMITIVE_SETS, build_op, resolve_primitives,
)
from fairdarts.search_space.supernet import GATES, MixedOp, SearchCell, Supernet, apply_gate

__all__ = [
    "METHODS", "derive", "derived_form", "empty_cell_advice", "Edge", "Genotype", "genotype_from_dict",
    "genotypes_with_edges", "get_genotype", "make_genotype", "parse_genotype_text",
    "registered_names", "NetworkCIFAR", "NetworkImageNet", "drop_path", "DARTS_PRIMITIVES",
    "FAIRDARTS_PRIMITIVES", "OPS", "PRIMITIVE_SETS", "build_op", "resolve_primitives", "GATES",
    "MixedOp", "SearchCell", "Supernet", "apply_gate", "MobileNetwork", "MobileSupernet", "mobile_primitives",
    "MOBILE_METHODS", "MOBILE_OPS", "MobileGenotype", "derive_mobile", "make_mobile_genotype",
    "NetworkSpec", "build_network", "network_spec", "topology",
]
