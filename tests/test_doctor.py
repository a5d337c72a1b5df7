"""``python -m fairdarts.doctor``: the environment report names versions, the native kernels'
state, the datasets found under ``--data`` and Graphviz, and says what will be slow or missing.
The native kernels stay switched off here (or find no compiler): nothing is built or cached."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fairdarts import doctor
from fairdarts.search_space import native


@pytest.fixture
def fresh_native():
    native.reset()
    yield
    native.reset()


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def _run(argv: list[str], capsys) -> str:
    assert doctor.main(argv) == 0
    return capsys.readouterr().out


def test_report_names_versions_datasets_and_notes(tmp_path, monkeypatch, capsys, fresh_native) -> None:
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    _touch(tmp_path, *[f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)], "test_32x32.mat",
           *[f"FashionMNIST/raw/{p}-{k}-idx{n}-ubyte.gz" for p in ("train", "t10k")
             for k, n in (("images", 3), ("labels", 1))], "train/cat/a.jpg", "val/cat/b.jpg")
    out = _run(["--data", str(tmp_path)], capsys)
    assert f"torch:          {torch.__version__}" in out
    assert "native kernels: off (turned off by FAIRDARTS_NATIVE_KERNELS=0)" in out
    datasets = next(line for line in out.splitlines() if line.startswith("datasets:"))
    assert datasets == (f"datasets:       {tmp_path}: cifar10 (train); svhn (test); fashion_mnist (train, test); "
                        "ImageNet/folder layout (train, test)")
    assert "runs PyTorch's kernels, the same numbers but slower" in out
    if not torch.cuda.is_available():
        assert "- no CUDA GPU: searches and retraining run on the CPU" in out


def test_top_level_idx_files_read_as_either_mnist(tmp_path, monkeypatch, capsys, fresh_native) -> None:
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    _touch(tmp_path, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    out = _run(["--data", str(tmp_path)], capsys)
    assert "mnist or fashion_mnist (same idx file names; --dataset says which) (train)" in out


def test_missing_compiler_dot_and_data_are_notes(tmp_path, monkeypatch, capsys, fresh_native) -> None:
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no cc, gcc, clang nor dot
    out = _run(["--data", str(tmp_path / "nothing")], capsys)
    assert "native kernels: off (no C compiler found" in out
    assert "a C compiler (gcc, clang or CC=...) enables them" in out
    assert "Graphviz dot:   not found" in out and "cell pictures are written as .dot source only" in out
    assert f"datasets:       {tmp_path / 'nothing'}: none found" in out
    assert "--dataset synthetic needs none" in out
