"""The native kernels' build cache: a library is loaded only if this process built it or its bytes
match their recorded digest, and every way the build can fail gives one log line and PyTorch's
kernels, never a crash.

Most tests use a stand-in compiler that answers ``--version`` as the real one (so the cache
names are the real ones) and "compiles" by copying a library the real compiler built once for
this module: a rebuild costs a copy, and the stand-in counts its builds.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fairdarts.search_space import FAIRDARTS_PRIMITIVES, Supernet, native

REPO = Path(__file__).resolve().parents[1]
REAL_CC = native._compiler()
needs_cc = pytest.mark.skipif(REAL_CC is None, reason="no C compiler")
pytestmark = [needs_cc, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    """A kernel library the real compiler built (through the cache) for this module."""
    folder = tmp_path_factory.mktemp("genuine")
    env = {**os.environ, native.ENV_CACHE: str(folder), "CC": str(REAL_CC)}
    env.pop(native.ENV_SWITCH, None)
    env.pop(native.ENV_SANITIZE, None)
    code = "from fairdarts.search_space import native; assert native.library() is not None, native.status()"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=REPO)
    (library,) = folder.glob("*.so")
    return library


def script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def stand_in_cc(tmp_path, genuine) -> str:
    """A compiler that copies the genuine library to its ``-o`` file after ``$FAKE_CC_DELAY``
    seconds and appends a line to ``builds.log`` for each build."""
    return script(tmp_path / "stand-in-cc", f"""\
        [ "$1" = --version ] && exec {REAL_CC} --version
        echo build >> {tmp_path / 'builds.log'}
        sleep "${{FAKE_CC_DELAY:-0}}"
        while [ $# -gt 0 ]; do [ "$1" = -o ] && exec cp {genuine} "$2"; shift; done
        exit 1
        """)


def builds(tmp_path: Path) -> int:
    log = tmp_path / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture
def load(monkeypatch):
    """``load(cache, cc)``: the kernel library a fresh process would get with these settings."""
    def _load(cache: Path, cc: str | None) -> object:
        monkeypatch.setenv(native.ENV_CACHE, str(cache))
        monkeypatch.delenv(native.ENV_SWITCH, raising=False)
        monkeypatch.delenv(native.ENV_SANITIZE, raising=False)
        if cc is None:
            monkeypatch.delenv("CC", raising=False)
        else:
            monkeypatch.setenv("CC", cc)
        native.reset()
        return native.library()
    yield _load
    monkeypatch.undo()
    native.reset()


def search_step_runs() -> None:
    """A supernet's forward and backward, on whatever kernels are loaded."""
    model = Supernet(4, 10, 3, FAIRDARTS_PRIMITIVES)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.weight_parameters() if p.grad is not None)


def test_cache_folder_is_owner_only_and_a_second_load_reuses_the_library(tmp_path, stand_in_cc, load) -> None:
    cache = tmp_path / "a" / "cache"
    assert load(cache, stand_in_cc) is not None and "built now" in native.status()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert load(cache, stand_in_cc) is not None and "from the cache" in native.status()
    assert builds(tmp_path) == 1
    (library,) = cache.glob("*.so")
    assert sorted(p.name for p in cache.iterdir()) == [library.name, library.name + ".sha256"]  # no temporary files
    record = json.loads((cache / (library.name + ".sha256")).read_text())
    assert record["bytes"] == library.stat().st_size and "-march=native" in record["flags"]


def planted_library(tmp_path: Path, marker: Path) -> Path:
    """A library that claims the kernels' version and writes ``marker`` when loaded."""
    source = tmp_path / "planted.c"
    source.write_text(textwrap.dedent(f"""\
        #include <stdio.h>
        __attribute__((constructor)) static void planted(void) {{
            FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("code ran", f); fclose(f); }}
        }}
        int fairdarts_kernels_version(void) {{ return {native.VERSION}; }}
        """))
    out = tmp_path / "planted.so"
    subprocess.run([str(REAL_CC), "-shared", "-fPIC", "-o", str(out), str(source)], check=True)
    return out


@pytest.mark.parametrize("digest", ["kept", "removed"], ids=["over-a-genuine-library", "without-a-digest"])
def test_a_planted_library_is_never_loaded(tmp_path, stand_in_cc, load, genuine, caplog, digest) -> None:
    """A library put in the cache under the expected name (its constructor would write a marker)
    is rebuilt, never loaded: whether its genuine digest stays beside it or is removed."""
    cache, marker = tmp_path / "cache", tmp_path / "constructor-ran"
    assert load(cache, stand_in_cc) is not None
    (library,) = cache.glob("*.so")
    shutil.copyfile(planted_library(tmp_path, marker), library)
    if digest == "removed":
        (cache / (library.name + ".sha256")).unlink()
    with caplog.at_level(logging.WARNING, logger="fairdarts"):
        lib = load(cache, stand_in_cc)
    assert not marker.exists(), "the planted library was loaded"
    assert lib is not None and lib.fairdarts_kernels_openmp() in (0, 1)  # the genuine kernels
    assert builds(tmp_path) == 2 and library.read_bytes() == genuine.read_bytes()
    assert ("has no recorded digest" if digest == "removed" else "does not match its recorded digest") in caplog.text
    search_step_runs()


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "empty": lambda p: p.write_bytes(b""),
    "fifo": lambda p: (p.unlink(), os.mkfifo(p)),
    "link": lambda p: (p.unlink(), p.symlink_to("/dev/zero")),
    "digest-garbage": lambda p: p.with_name(p.name + ".sha256").write_bytes(b"\xff{not json"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_cached_library_is_rebuilt(tmp_path, stand_in_cc, load, genuine, damage) -> None:
    """A truncated, garbage or 0-byte library, a FIFO or link in its place, or a garbled digest:
    rebuilt and replaced, never loaded, never blocking."""
    cache = tmp_path / "cache"
    assert load(cache, stand_in_cc) is not None
    (library,) = cache.glob("*.so")
    DAMAGE[damage](library)
    assert load(cache, stand_in_cc) is not None and "built now" in native.status()
    assert builds(tmp_path) == 2 and library.read_bytes() == genuine.read_bytes()
    search_step_runs()


def _one_warning_and_pytorch(caplog, load, cache: Path, cc: str | None) -> str:
    """Load with these settings: no library, exactly one log line (returned), the search still runs."""
    with caplog.at_level(logging.INFO, logger="fairdarts"):
        assert load(cache, cc) is None
        search_step_runs()
    lines = [r.getMessage() for r in caplog.records if r.name == "fairdarts"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "PyTorch's slower kernels run" in lines[0] and "off (" in native.status()
    return lines[0]


COMPILERS = {
    "failing": ('[ "$1" = --version ] && exec {cc} --version\necho "kernels.c:1: error: boom" >&2\nexit 1\n',
                "error: boom"),
    "prints-garbage": ('head -c 3000 /dev/urandom\nhead -c 3000 /dev/urandom >&2\nexit 0\n', "wrote no library"),
    "writes-garbage": ('[ "$1" = --version ] && exec {cc} --version\n'
                       'while [ $# -gt 0 ]; do [ "$1" = -o ] && head -c 5000 /dev/urandom > "$2"; shift; done\n',
                       "built no loadable library"),
    "writes-nothing": ('[ "$1" = --version ] && exec {cc} --version\n'
                       'while [ $# -gt 0 ]; do [ "$1" = -o ] && : > "$2"; shift; done\n', "empty file"),
    "version-fails": ("exit 3\n", "--version failed"),
}


@pytest.mark.parametrize("kind", COMPILERS)
def test_a_broken_compiler_gives_one_line_and_pytorchs_kernels(tmp_path, load, caplog, kind) -> None:
    """A compiler that fails, prints or writes garbage, or writes an empty library: one log line,
    PyTorch's kernels, and nothing cached for good."""
    body, expected = COMPILERS[kind]
    cc = script(tmp_path / "cc", body.format(cc=REAL_CC))
    line = _one_warning_and_pytorch(caplog, load, tmp_path / "cache", cc)
    assert expected in line
    assert not list((tmp_path / "cache").glob("*.so*"))


def test_no_compiler_gives_one_line_and_pytorchs_kernels(tmp_path, load, caplog, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "no C compiler" in _one_warning_and_pytorch(caplog, load, tmp_path / "cache", None)


@pytest.mark.parametrize("unsafe", ["writable-by-others", "another-users", "not-a-folder"])
def test_an_unsafe_cache_folder_is_not_used(tmp_path, stand_in_cc, load, caplog, unsafe) -> None:
    """A cache folder others may write to, or one of another user, could hold a planted library:
    refused with one line; PyTorch's kernels run."""
    cache = tmp_path / "cache"
    if unsafe == "not-a-folder":
        cache.write_text("")
    else:
        cache.mkdir()
        cache.chmod(0o777 if unsafe == "writable-by-others" else 0o700)
    if unsafe == "another-users":
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another user takes root")
        os.chown(cache, 4242, 4242)
    line = _one_warning_and_pytorch(caplog, load, cache, stand_in_cc)
    assert str(cache) in line and builds(tmp_path) == 0


def test_a_compiler_without_openmp_builds_the_one_thread_library(tmp_path, load) -> None:
    """Where ``-fopenmp`` fails (a compiler without OpenMP), the build is retried without it and
    the library runs on one thread, computing the same."""
    cc = script(tmp_path / "cc-without-openmp",
                f'for a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {REAL_CC} "$@"\n')
    assert load(tmp_path / "cache", cc) is not None and not native.openmp()
    assert "no OpenMP" in native.status()
    search_step_runs()


CHILD = """
import sys, torch
from fairdarts.search_space import native
from fairdarts.search_space.native.chain import conv_bn_chain
from torch import nn
lib = native.library()
assert lib is not None, native.status()
x = torch.randn(3, 8, 9, 9, dtype=torch.float64)
dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False).double()
pw, bn = nn.Conv2d(8, 8, 1, bias=False).double(), nn.BatchNorm2d(8, affine=False).double()
assert torch.allclose(conv_bn_chain(x, dw, pw, bn, True), bn(pw(dw(x.relu()))), atol=1e-10)
print(native.status())
"""


def test_two_processes_building_at_once_each_load_a_complete_library(tmp_path, stand_in_cc) -> None:
    """Two processes start with an empty cache and both build (each "compile" takes a second):
    each loads its own complete library, and the cache ends with one library and its digest."""
    cache = tmp_path / "cache"
    env = {**os.environ, native.ENV_CACHE: str(cache), "CC": stand_in_cc, "FAKE_CC_DELAY": "1"}
    env.pop(native.ENV_SWITCH, None)
    children = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=REPO, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outputs = [child.communicate(timeout=600) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    assert all("built now" in out for out, _ in outputs) and builds(tmp_path) == 2
    (library,) = cache.glob("*.so")
    assert sorted(p.name for p in cache.iterdir()) == [library.name, library.name + ".sha256"]


UNSHARE = shutil.which("unshare")


@pytest.mark.skipif(UNSHARE is None or not sys.platform.startswith("linux"), reason="needs Linux and unshare")
@pytest.mark.parametrize("mount", ["ro", "size=64k"], ids=["read-only", "full"])
def test_a_read_only_or_full_cache_folder_gives_one_line(tmp_path, stand_in_cc, mount) -> None:
    """The cache folder on a read-only file system, or on one too small for the library (a tmpfs
    mounted in a private mount namespace): one log line, PyTorch's kernels, the search runs."""
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    code = textwrap.dedent("""\
        import logging, torch
        from fairdarts.search_space import FAIRDARTS_PRIMITIVES, Supernet, native
        logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
        assert native.library() is None
        Supernet(4, 10, 3, FAIRDARTS_PRIMITIVES)(torch.randn(2, 3, 8, 8)).sum().backward()
        print("search ran")
        """)
    env = {**os.environ, native.ENV_CACHE: str(cache), "CC": stand_in_cc}
    env.pop(native.ENV_SWITCH, None)
    shell = f'mount -t tmpfs -o {mount},mode=0700 tmpfs "{cache}" && exec "{sys.executable}" -c "$0"'
    probe = subprocess.run([UNSHARE, "-rm", "sh", "-c", f'mount -t tmpfs tmpfs "{tmp_path}"'], capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot mount a tmpfs in a private namespace: {probe.stderr.decode(errors='replace').strip()}")
    done = subprocess.run([UNSHARE, "-rm", "sh", "-c", shell, code], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    logged = [line for line in done.stderr.splitlines() if line.startswith("LOG")]
    assert len(logged) == 1 and "PyTorch's slower kernels run" in logged[0], done.stderr
    assert ("not writable" if mount == "ro" else "No space left") in logged[0]
    assert "search ran" in done.stdout
