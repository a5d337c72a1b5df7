"""Derived networks: a genotype's cells stacked into a CIFAR or ImageNet classifier.

Module names and order reproduce the official DARTS / Fair DARTS model code so that their
checkpoints load with ``strict=True``:

* DARTS form: ``cells.N._ops.<k>`` (one op per genotype entry, in genotype order).
* Fair DARTS form: ``cells.N._ops.<to>.<from>.<k>`` (nodes in order of first appearance of
  ``to``; all ops between the same two nodes in one list). A node exists only if an edge ends
  in it; edges from a missing node are skipped; the output concatenates the existing nodes in
  that order (``*_concat`` is not used). Drop path acts on a node's summed output.

The forward returns ``(logits, logits_aux)`` like the official networks; ``logits_aux`` is
``None`` unless the auxiliary head exists and the model is training.
"""
from __future__ import annotations

import torch
from torch import nn

from fairdarts.errors import UserError
from fairdarts.invocation import command
from fairdarts.search_space.genotypes import Genotype
from fairdarts.search_space.operations import FactorizedReduce, Identity, ReLUConvBN, build_op
from fairdarts.search_space.topology import is_reduction, reduction_layers


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (not in place)."""
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty(x.size(0), 1, 1, 1).bernoulli_(keep_prob)
    return x / keep_prob * mask


class _CellBase(nn.Module):
    """Preprocessing of the two cell inputs, shared by both genotype forms."""

    def __init__(self, C_prev_prev: int, C_prev: int, C: int, reduction_prev: bool):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.multiplier = 0


class DartsCell(_CellBase):
    """A cell of the DARTS form (two inputs per node); also the reweight form."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__(C_prev_prev, C_prev, C, reduction_prev)
        edges, concat = genotype.cell(reduction)
        self.reduction = reduction
        self._steps = len(edges) // 2
        self._concat = list(concat)
        self.multiplier = len(concat)
        self._indices = [e.src for e in edges]
        self._edge_weights = [e.weight for e in edges]
        self._ops = nn.ModuleList(
            build_op(e.op, C, 2 if reduction and e.src < 2 else 1) for e in edges
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            node = 0
            for k in (2 * i, 2 * i + 1):
                op = self._ops[k]
                h = op(states[self._indices[k]])
                if self._edge_weights[k] is not None:
                    h = h * self._edge_weights[k]
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self._concat], dim=1)


class FairDartsCell(_CellBase):
    """A cell of the Fair DARTS form (any number of edges per node, isolated nodes dropped)."""

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__(C_prev_prev, C_prev, C, reduction_prev)
        edges, _ = genotype.cell(reduction)
        self.reduction = reduction
        self._nodes = genotype.live_nodes(reduction)
        if not self._nodes:
            kind = "reduction" if reduction else "normal"
            raise UserError(f"the genotype's {kind} cell has no edges (no gate reached the threshold of its "
                            "derivation); derive it again with --parse_method darts, or a lower --op_threshold: "
                            f"`{command('derive')} RUN_DIR` prints the gate range")
        self.multiplier = len(self._nodes)
        self._ops = nn.ModuleDict()
        for e in edges:
            to, src = str(e.to), str(e.src)
            if to not in self._ops:
                self._ops[to] = nn.ModuleDict()
            if src not in self._ops[to]:
                self._ops[to][src] = nn.ModuleList()
            self._ops[to][src].append(build_op(e.op, C, 2 if reduction and e.src < 2 else 1))
        # Nodes are computed in index order (inputs first), concatenated in appearance order.
        self._compute_order = sorted(self._nodes)
        for node in self._compute_order:
            if not any(int(src) < 2 or int(src) in self._nodes for src in self._ops[str(node)]):
                raise UserError(f"node {node} of the genotype's cell only takes inputs from missing nodes")

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = {0: self.preprocess0(s0), 1: self.preprocess1(s1)}
        for node in self._compute_order:
            total = 0
            for src, ops in self._ops[str(node)].items():
                h_in = states.get(int(src))
                if h_in is None:
                    continue
                for op in ops:
                    total = total + op(h_in)
            if self.training and drop_prob > 0:
                total = drop_path(total, drop_prob)
            states[node] = total
        return torch.cat([states[n] for n in self._nodes], dim=1)


def make_cell(genotype: Genotype, C_prev_prev: int, C_prev: int, C: int,
              reduction: bool, reduction_prev: bool) -> _CellBase:
    cls = FairDartsCell if genotype.form == "fairdarts" else DartsCell
    return cls(genotype, C_prev_prev, C_prev, C, reduction, reduction_prev)


def _auxiliary_features(C: int, pool: nn.Module, bn_after_2x2: bool) -> nn.Sequential:
    """ReLU, pool, 1x1 conv to 128, BN, ReLU, 2x2 conv to 768, [BN,] ReLU: the official module
    order, so that ``features.<i>`` keys match official checkpoints."""
    layers = [nn.ReLU(inplace=False), pool, nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128),
              nn.ReLU(inplace=True), nn.Conv2d(128, 768, 2, bias=False)]
    if bn_after_2x2:
        layers.append(nn.BatchNorm2d(768))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class _AuxiliaryHead(nn.Module):
    """The auxiliary classifier at 2/3 depth: ``features`` then a linear layer on 768 values."""

    def __init__(self, features: nn.Sequential, num_classes: int):
        super().__init__()
        self.features = features
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.flatten(1))


class AuxiliaryHeadCIFAR(_AuxiliaryHead):
    """Auxiliary classifier on the 8x8 maps at 2/3 depth (other sizes pool adaptively to 2x2)."""

    def __init__(self, C: int, num_classes: int, feature_size: int = 8):
        pool: nn.Module = (nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)
                           if feature_size >= 8 else nn.AdaptiveAvgPool2d(2))
        super().__init__(_auxiliary_features(C, pool, bn_after_2x2=True), num_classes)


class AuxiliaryHeadImageNet(_AuxiliaryHead):
    """Auxiliary classifier on the 7x7 maps of a 224 px input (other sizes pool adaptively to 2x2).

    The official head has no BN after the 2x2 conv (a typo kept for its published results).
    """

    def __init__(self, C: int, num_classes: int, feature_size: int = 7):
        pool: nn.Module = (nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False)
                           if feature_size >= 7 else nn.AdaptiveAvgPool2d(2))
        super().__init__(_auxiliary_features(C, pool, bn_after_2x2=False), num_classes)


class _StackedCells(nn.Module):
    """Cells stacked after a stem, channels doubled at each reduction (shared by both nets)."""

    def _build_cells(self, genotype: Genotype, C: int, layers: int, C_stem: int,
                     reduction_prev: bool) -> int:
        if layers < 3:
            raise UserError(f"--layers must be at least 3 (two reduction cells and one normal), got {layers}")
        self.drop_path_prob = 0.0
        self._layers = layers
        self._aux_index = reduction_layers(layers)[1]
        C_prev_prev, C_prev, C_curr = C_stem, C_stem, C
        self.cells = nn.ModuleList()
        C_to_auxiliary = C_prev
        for i in range(layers):
            reduction = is_reduction(i, layers)
            if reduction:
                C_curr *= 2
            cell = make_cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == self._aux_index:
                C_to_auxiliary = C_prev
        self._C_final = C_prev
        return C_to_auxiliary

    def _run_cells(self, s0: torch.Tensor, s1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self._aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1)), logits_aux


class NetworkCIFAR(_StackedCells):
    """The CIFAR network: 3x3 conv stem with 3C channels, ``layers`` cells, linear classifier."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, image_size: int = 32, stem_multiplier: int = 3):
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        C_aux = self._build_cells(genotype, C, layers, C_stem, reduction_prev=False)
        self.auxiliary_head = AuxiliaryHeadCIFAR(C_aux, num_classes, image_size // 4) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self._C_final, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s = self.stem(x)
        return self._run_cells(s, s)


class NetworkImageNet(_StackedCells):
    """The ImageNet network: two stride-2 stems (stride 8 in all), then the cells."""

    def __init__(self, C: int, num_classes: int, layers: int, auxiliary: bool, genotype: Genotype,
                 in_channels: int = 3, image_size: int = 224):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),  # s0 also feeds the first cell: do not overwrite it
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        C_aux = self._build_cells(genotype, C, layers, C, reduction_prev=True)
        self.auxiliary_head = AuxiliaryHeadImageNet(C_aux, num_classes, image_size // 32) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self._C_final, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        return self._run_cells(s0, s1)
