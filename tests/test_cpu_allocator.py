"""The allocator tuning the command-line tools apply at start-up."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from fairdarts.cpu_allocator import ENV_SWITCH, keep_freed_memory

GLIBC_LINUX = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

_CHILD = """
import resource, torch
from fairdarts.cpu_allocator import keep_freed_memory
tuned = keep_freed_memory()
def work():  # 200 blocks of 100 kB from the heap, all freed: glibc trims the freed heap top
    blocks = [torch.ones(25_000) for _ in range(200)]
    del blocks
work()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
work()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _child(env_value: str) -> tuple[bool, int]:
    import os
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True,
                         env={**os.environ, ENV_SWITCH: env_value})
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not GLIBC_LINUX, reason="glibc's mallopt only")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    tuned, faults = _child("1")
    untuned, faults_default = _child("0")
    assert tuned and not untuned
    # 20 MB trimmed and faulted in again (~5,000 pages) by default; kept memory faults almost none.
    assert faults_default > 2_000
    assert faults < faults_default / 10


def test_switch_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert keep_freed_memory() is False
