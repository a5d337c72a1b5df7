"""FLOPs and parameter counts as the papers report them.

FLOPs are thop's multiply-accumulate count for one image with BatchNorm left out (the
official note: "We remove batch normalization for FLOPs' calculation in thop package").
Parameters are counted with and without the auxiliary head (Fair DARTS publishes most of
its networks with it, DARTS without), and without BatchNorm's affine parameters (FairNAS'
published parameter counts of the S2 networks agree with either within rounding).
"""
from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from fairdarts.search_space.cost import ModelCost


def _no_count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    module.total_ops += torch.zeros(1, dtype=torch.float64)


def count_flops_params(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> ModelCost:
    """thop MACs (BatchNorm excluded) of one forward pass in eval mode, and parameter counts."""
    import copy

    from thop import profile
    from thop.vision.basic_hooks import count_convNd

    from fairdarts.search_space.depthwise import DepthwiseConv2d

    params = sum(p.numel() for p in model.parameters())
    aux = getattr(model, "auxiliary_head", None)
    params_aux = sum(p.numel() for p in aux.parameters()) if aux is not None else 0
    params_bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                    for p in m.parameters(recurse=False))
    # thop registers buffers on the modules it visits: count on a throwaway copy.
    probe = copy.deepcopy(model).eval()
    device = next(probe.parameters()).device
    # thop matches exact types: our nn.Conv2d subclass must be named to be counted.
    custom = {nn.BatchNorm2d: _no_count, nn.BatchNorm1d: _no_count, DepthwiseConv2d: count_convNd}
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        flops, _ = profile(probe, inputs=(torch.zeros(input_size, device=device),),
                           custom_ops=custom, verbose=False)
    return ModelCost(flops=int(round(flops)), params=params, params_no_aux=params - params_aux,
                     params_no_bn=params - params_bn)
