"""Devices and torchrun: single-process no-ops, and two real CPU processes on gloo."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import REPO
from fairdarts.distributed import (
    DistContext, all_reduce_mean_, all_reduce_sum_, barrier, broadcast_object, init_distributed, resolve_device,
)
from fairdarts.errors import UserError


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_batch_size_is_global_and_split_over_ranks():
    """Regression: each rank used to take the whole --batch_size, doubling the global batch."""
    cpu = torch.device("cpu")
    assert DistContext(0, 1, 0, cpu).per_rank_batch(96) == 96
    assert DistContext(1, 4, 1, cpu).per_rank_batch(96) == 24
    for bad in (10, 2):
        with pytest.raises(UserError, match="does not split evenly over 4 ranks"):
            DistContext(0, 4, 0, cpu).per_rank_batch(bad)


def test_single_process_context_and_no_op_collectives(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext(0, 1, 0, torch.device("cpu")) and ctx.is_main and not ctx.is_distributed
    t = torch.tensor([2.0])
    assert all_reduce_mean_(t) is t and all_reduce_sum_(t).item() == 2.0
    assert broadcast_object({"a": 1}) == {"a": 1}
    barrier()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE"):
        init_distributed("cpu")


WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from fairdarts.distributed import (all_reduce_mean_, all_reduce_sum_, average_gradients_, barrier,
                                       broadcast_object, cleanup_distributed, init_distributed)

    ctx = init_distributed("cpu")
    r = ctx.rank
    alphas = [torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True), torch.zeros(1)]
    alphas[0].grad = torch.tensor([1.0, 2.0]) * (r + 1)
    alphas[1].grad = torch.tensor([10.0 * r])
    average_gradients_(alphas)
    result = {
        "rank": r, "world_size": ctx.world_size, "is_main": ctx.is_main,
        "mean": all_reduce_mean_(torch.tensor([r + 1.0])).tolist(),
        "sum": all_reduce_sum_(torch.tensor([r + 1.0])).tolist(),
        "grads": [alphas[0].grad.tolist(), alphas[1].grad.tolist()],
        "broadcast": broadcast_object(f"runs/chosen-by-{r}"),
    }
    barrier()
    with open(f"{sys.argv[1]}/rank{r}.json", "w") as f:
        json.dump(result, f)
    cleanup_distributed()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_processes_agree(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(tmp_path)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    results = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    for i, res in enumerate(results):
        assert (res["rank"], res["world_size"], res["is_main"]) == (i, 2, i == 0)
        assert res["mean"] == [1.5] and res["sum"] == [3.0]
        assert res["grads"] == [[1.5, 3.0], [5.0]]
        assert res["broadcast"] == "runs/chosen-by-0"
