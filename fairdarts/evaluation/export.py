"""ONNX export of a derived network for deployment, checked with onnxruntime when installed.

The exported graph is the eval-mode main classifier only (no auxiliary head, no drop path),
taking a normalised ``[N, C, H, W]`` float batch (dynamic N) and returning the logits.
"""
from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import Tensor, nn

from fairdarts.errors import UserError
from fairdarts.run_dir import atomic_write_bytes


class LogitsOnly(nn.Module):
    """The network's main logits: ONNX graphs return tensors, not ``(logits, None)``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)[0]


def export_onnx(model: nn.Module, example: Tensor, path: Path, opset: int = 17) -> None:
    """Write ``model`` (eval mode, CPU) as ONNX to ``path`` atomically."""
    wrapped = LogitsOnly(model).eval().cpu()
    buffer = io.BytesIO()
    try:
        torch.onnx.export(wrapped, (example.cpu(),), buffer, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    except Exception as exc:  # exporter failures are environment problems, reported in one line
        first_line = str(exc).splitlines()[0] if str(exc) else ''
        raise UserError(f"ONNX export failed: {type(exc).__name__}: {first_line}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def check_onnx(path: Path, model: nn.Module, example: Tensor) -> float | None:
    """Max |logit difference| between onnxruntime and PyTorch on ``example``; None without onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"input": example.cpu().numpy()})
    with torch.no_grad():
        ref = LogitsOnly(model).eval().cpu()(example.cpu())
    return float((torch.from_numpy(onnx_logits) - ref).abs().max())
