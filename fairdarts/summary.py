"""FLOPs and parameter counts of derived networks: ``python -m fairdarts.summary --arch FairDARTS_a``.

Counts as the papers do: thop MACs for one image with BatchNorm excluded, parameters with
and without the auxiliary head and without BatchNorm. ``--all`` tabulates every registered
genotype, ``--json`` prints the same rows as JSON. Cell genotypes are built for CIFAR-10
(32 px, 10 classes) unless told otherwise; mobile genotypes (search space S2, e.g.
``FairNAS_A``) for ImageNet (224 px, 1000 classes), at ``--width_mult``.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from fairdarts import MobileGenotype, build_network, count_flops_params, get_genotype, registered_names
from fairdarts.errors import CLIParser, UserError, finite_float, run_cli
from fairdarts.help_groups import add_flag, group_of, help_sections, metavar
from fairdarts.invocation import prog
from fairdarts.threads import HELP as THREADS_HELP, set_threads

DESCRIPTION = ("FLOPs and parameter counts of derived networks, counted as the papers do: MACs for one image "
               "without BatchNorm; parameters with and without the auxiliary head and without BatchNorm. Cell "
               "genotypes are built for CIFAR-10 (32 px, 10 classes), mobile ones (search space S2, e.g. "
               "FairNAS_A) for ImageNet (224 px, 1000 classes), unless told otherwise.")

#: (image size, classes) when not given: CIFAR-10 for cells, ImageNet for mobile networks.
DEFAULT_INPUT = {"cell": (32, 10), "mobile": (224, 1000)}


@dataclass(frozen=True)
class SummaryRow:
    name: str
    flops: int
    params: int
    params_no_aux: int
    params_no_bn: int
    image_size: int


def summarize(arch: str, init_channels: int = 36, layers: int = 20, num_classes: int | None = None,
              image_size: int | None = None, in_channels: int = 3, dataset: str = "cifar10",
              width_mult: float = 1.0) -> SummaryRow:
    """FLOPs and params of ``arch`` built with the auxiliary head (counted separately)."""
    g = get_genotype(arch)
    size, classes = DEFAULT_INPUT["mobile" if isinstance(g, MobileGenotype) else "cell"]
    size, classes = image_size or size, num_classes or classes
    net = build_network(g, init_channels, layers, classes, auxiliary=True, dataset=dataset,
                        in_channels=in_channels, image_size=size, width_mult=width_mult)
    cost = count_flops_params(net, (1, in_channels, size, size))
    return SummaryRow(str(arch), cost.flops, cost.params, cost.params_no_aux, cost.params_no_bn, size)


def format_table(rows: list[SummaryRow]) -> str:
    width = max([len(r.name) for r in rows] + [8])
    lines = [f"{'genotype':<{width}}  {'px':>4}  {'FLOPs (M)':>10}  {'params (M)':>10}  {'no aux (M)':>10}  "
             f"{'no BN (M)':>10}"]
    lines += [f"{r.name:<{width}}  {r.image_size:>4}  {r.flops / 1e6:>10.1f}  {r.params / 1e6:>10.3f}  "
              f"{r.params_no_aux / 1e6:>10.3f}  {r.params_no_bn / 1e6:>10.3f}" for r in rows]
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog=prog("summary"), description=DESCRIPTION)
    sections = help_sections(p)
    which = sections[group_of("arch")].add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", metavar=metavar("arch", str),
                       help="genotype name, JSON file, search run folder or Genotype(...) text "
                       "(this or --all is required)")
    which.add_argument("--all", action="store_true", help="every registered genotype")
    add_flag(sections, "--init_channels", type=_positive, default=36,
             help="channels of the first cell; cell networks only (default: 36)")
    add_flag(sections, "--layers", type=_positive, default=20, help="number of cells; cell networks only (default: 20)")
    add_flag(sections, "--dataset", default="cifar10", choices=["cifar10", "imagenet"],
             help="imagenet builds the ImageNet cell network, use --image_size 224 (default: cifar10)")
    add_flag(sections, "--width_mult", type=_positive_float, default=1.0,
             help="channel width multiplier; mobile networks only (default: 1.0)")
    add_flag(sections, "--num_classes", type=_positive, default=None,
             help="classifier outputs (default: 10 for cell genotypes, 1000 for mobile ones)")
    add_flag(sections, "--image_size", type=_positive, default=None,
             help="pixels of the square input image the FLOPs are counted for (default: 32 cell, 224 mobile)")
    add_flag(sections, "--in_channels", type=_positive, default=3,
             help="input image channels, 1 for (Fashion-)MNIST (default: 3)")
    add_flag(sections, "--threads", type=_positive, default=None, help=THREADS_HELP)
    add_flag(sections, "--json", action="store_true",
             help="print a JSON list of {name, flops, params, params_no_aux, params_no_bn, image_size}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    names = registered_names() if args.all else [args.arch]
    rows = []
    for name in names:
        try:
            rows.append(summarize(name, args.init_channels, args.layers, args.num_classes,
                                  args.image_size, args.in_channels, args.dataset, args.width_mult))
        except UserError:
            raise
        except RuntimeError as exc:  # e.g. an image too small for the network
            raise UserError(f"cannot build {name} at {args.image_size or 'its default'} px: "
                            f"{str(exc).splitlines()[0]}") from None
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    run_cli(main)
