"""Launch the command lines in separate processes with fault points, kill them, compare runs.

Processes come from the fork server in ``zygote.py`` (torch imported once) through
:class:`Launcher`; :func:`run_fresh` starts a real interpreter instead, for the check that
both behave alike. Fault specs are those of ``wrapper.py``.
"""
from __future__ import annotations

import collections
import hashlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: One thread per process: the CI machine has 2 cores, and equal results need equal thread counts.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
#: What the suite did, printed in pytest's terminal summary (see conftest.py).
COUNTS: collections.Counter[str] = collections.Counter()


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str


class Proc:
    """A running command: its pid, its output files, and its exit code once it ends."""

    def __init__(self, launcher: "Launcher", pid: int, stdout: Path, stderr: Path) -> None:
        self.launcher, self.pid, self.stdout_path, self.stderr_path = launcher, pid, stdout, stderr
        self.rc: int | None = None

    def stdout(self) -> str:
        """What it printed so far (nothing yet if the child has not opened its file)."""
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def wait_for(self, marker: str, timeout: float = 120.0) -> bool:
        """True once ``marker`` is in stdout; False if the process ended first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if marker in self.stdout():
                return True
            if self.poll() is not None:
                return marker in self.stdout()
            time.sleep(0.01)
        raise TimeoutError(f"no {marker!r} in {timeout} s; stdout ends with: {self.stdout()[-2000:]}")

    def poll(self) -> int | None:
        if self.rc is None:
            self.rc = self.launcher.next_rc(block=False)
        return self.rc

    def wait(self, timeout: float = 300.0) -> Result:
        if self.rc is None:
            self.rc = self.launcher.next_rc(block=True, timeout=timeout)
        return Result(self.rc, self.stdout(), self.stderr_path.read_text(errors="replace"))

    def kill(self) -> Result:
        """SIGKILL, the signal a pre-empting scheduler or the OOM killer sends: no handler runs."""
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:  # it ended on its own meanwhile
                pass
        return self.wait()


class Launcher:
    """The fork server: one command at a time, each in its own process."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.count = 0
        self.current: Proc | None = None
        self.server = subprocess.Popen([sys.executable, str(HERE / "zygote.py")], cwd=REPO, env=ENV, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.replies: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._reply(timeout=300) == "ready"

    def _read(self) -> None:
        for line in self.server.stdout:  # type: ignore[union-attr]
            self.replies.put(line.strip())
        self.replies.put("closed")

    def _reply(self, timeout: float | None = None) -> str:
        return self.replies.get(timeout=timeout)

    def next_rc(self, block: bool, timeout: float | None = None) -> int | None:
        try:
            reply = self._reply(timeout) if block else self.replies.get_nowait()
        except queue.Empty:
            if block:
                raise TimeoutError(f"the command did not end within {timeout} s") from None
            return None
        kind, value = reply.split()
        assert kind == "rc", reply
        return int(value)

    def start(self, entry: str, argv: list[str], spec: dict[str, Any] | None = None, cwd: Path | None = None) -> Proc:
        self._end_current()
        self.count += 1
        out, err = self.logs / f"{self.count:04d}.out", self.logs / f"{self.count:04d}.err"
        request = {"entry": entry, "argv": [str(a) for a in argv], "spec": spec or {}, "cwd": str(cwd or REPO),
                   "stdout": str(out), "stderr": str(err)}
        self.server.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.server.stdin.flush()  # type: ignore[union-attr]
        kind, pid = self._reply(timeout=60).split()
        assert kind == "pid"
        self.current = Proc(self, int(pid), out, err)
        return self.current

    def run(self, entry: str, argv: list[str], spec: dict[str, Any] | None = None, cwd: Path | None = None,
            timeout: float = 300.0) -> Result:
        return self.start(entry, argv, spec, cwd).wait(timeout)

    def _end_current(self) -> None:
        """Kill the previous command if a failed test left it running (the server runs one at a time)."""
        if self.current is not None and self.current.poll() is None:
            self.current.kill()

    def close(self) -> None:
        self._end_current()
        self.server.stdin.close()  # type: ignore[union-attr]
        self.server.wait(timeout=30)


def run_fresh(entry: str, argv: list[str], cwd: Path, spec: dict[str, Any] | None = None) -> Result:
    """``python wrapper.py SPEC entry argv``: a new interpreter, as a user would start it."""
    cmd = [sys.executable, str(HERE / "wrapper.py"), json.dumps(spec or {}), entry, *map(str, argv)]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_one_line_error(result: Result) -> str:
    """The contract of a user mistake: non-zero exit, one line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.rc not in (0, None), f"exit code {result.rc}; stderr: {result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{result.stderr}"
    return lines[0]


def max_state_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0) for k in a)
