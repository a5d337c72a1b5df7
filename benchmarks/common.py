"""What every benchmark script shares: device sync, the machine description, the JSON file."""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch


def sync(dev: torch.device) -> None:
    """Wait for queued CUDA work, so that a wall-clock interval covers it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def machine_meta(dev: torch.device) -> dict:
    """Where the figures were taken: they mean nothing without it."""
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def write_results(path: str | Path, meta: dict, rows: list[dict]) -> Path:
    """``{"meta": ..., "results": [...]}`` as indented JSON (written again after every row)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    return out
