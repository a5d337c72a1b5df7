"""The native kernels under AddressSanitizer and UBSan (slow tier).

The kernels are built from the same sources with ``-fsanitize=address,undefined`` (and
``-fno-sanitize-recover=all``: any finding ends the process) into a cache folder of their own
(``FAIRDARTS_NATIVE_SANITIZE=1``), and the tests of the native kernels, the depthwise
convolutions, the pools, the mixed edges and the fast supernet, and a short run of the
differential fuzz, run in a Python that preloads the ASan runtime. A report fails the test and
is shown. A first test checks that the set-up catches what it should: a deliberate write past
the end of a tensor must be reported.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fairdarts.search_space import native

REPO = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_native_kernels.py", "tests/test_native_pool.py", "tests/test_depthwise.py",
         "tests/test_fast_supernet.py", "tests/test_native_fuzz.py"]
#: The slowest tests of those files (each 15-60 s under the sanitizers), whose shapes others cover.
SKIPPED = "not twenty_step and not search_cell_gradients and not second_order and not switched_off"


def runtime(cc: str | None, name: str) -> str | None:
    """The path of the compiler's ``name`` runtime library, or None where it has none."""
    if cc is None:
        return None
    done = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    path = done.stdout.strip()
    return path if done.returncode == 0 and os.path.isabs(path) and os.path.exists(path) else None


CC = native._compiler()
ASAN, STDCXX = runtime(CC, "libasan.so"), runtime(CC, "libstdc++.so.6")
pytestmark = pytest.mark.skipif(ASAN is None, reason=f"the C compiler ({CC}) has no AddressSanitizer runtime")


def sanitizer_env(reports: Path) -> dict[str, str]:
    """The environment of a Python run under the sanitizers: the sanitized build, the ASan runtime
    preloaded (with libstdc++, whose ``__cxa_throw`` ASan must find at start-up or the first C++
    exception PyTorch throws aborts), leak checks off (CPython frees little at exit), and every
    report written to ``reports``, where pytest's output capture cannot swallow it."""
    reports.mkdir(exist_ok=True)
    env = {**os.environ, native.ENV_SANITIZE: "1", "LD_PRELOAD": " ".join(p for p in (ASAN, STDCXX) if p),
           "ASAN_OPTIONS": f"detect_leaks=0:log_path={reports}/asan",
           "UBSAN_OPTIONS": f"print_stacktrace=1:halt_on_error=1:log_path={reports}/ubsan",
           "FAIRDARTS_FUZZ_CASES": "8"}
    env.pop(native.ENV_SWITCH, None)
    return env


def run_sanitized(code: str, reports: Path) -> tuple[subprocess.CompletedProcess, str]:
    """(the finished run of ``code``, the sanitizer reports it left)."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=sanitizer_env(reports), cwd=REPO,
                          capture_output=True, text=True, timeout=3000)
    return done, "\n".join(p.read_text(errors="replace") for p in sorted(reports.iterdir()))


LOAD = """
    from fairdarts.search_space import native
    assert native.library() is not None and "sanitize" in native.status(), native.status()
"""


def test_the_sanitizers_report_a_write_past_a_tensor(tmp_path) -> None:
    """The set-up works: a pooling into an output one element long writes past its end, and
    AddressSanitizer stops the process with a heap-buffer-overflow report."""
    done, reports = run_sanitized(LOAD + """
    import torch
    x, y = torch.randn(1, 3, 3, 8, dtype=torch.float64), torch.empty(1, dtype=torch.float64)
    native.library().pool3x3_forward_f64(x.data_ptr(), y.data_ptr(), 1, 3, 3, 8, 3, 3, 1, 0)
    print("not caught")
    """, tmp_path / "reports")
    assert done.returncode != 0 and "not caught" not in done.stdout, done.stderr
    assert "heap-buffer-overflow" in reports and "fairdarts_kernels" in reports, done.stderr


@pytest.mark.timeout(3600)  # a few minutes alone; ten and more on a busy machine
def test_native_tests_pass_under_the_sanitizers(tmp_path) -> None:
    done, reports = run_sanitized(LOAD + f"""
    import sys, pytest
    sys.exit(pytest.main({TESTS!r} + ["-q", "-x", "-p", "no:cacheprovider", "-k", {SKIPPED!r}]))
    """, tmp_path / "reports")
    assert not reports, reports
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
