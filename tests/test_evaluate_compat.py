"""evaluate.py on official-layout checkpoints (tests/fixtures/compat): logits to 1e-5 through the
CLI's loading path, a CIFAR-format test set, ONNX export, and one-line errors for a checkpoint
that does not fit its genotype, a corrupt file, a missing genotype or a missing published file;
every official layout loads strictly through the CLI's loading path."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import COMPAT
from fairdarts.errors import run_cli
from fairdarts.evaluation.cli import main
from fairdarts.evaluation.evaluator import load_model

REPO = Path(__file__).resolve().parents[1]
NAMES = ["FairDARTS_a", "FairDARTS_b", "FairDARTS_c", "DARTS_V2", "PC_DARTS_cifar"]
CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)


SHAPES = json.loads((COMPAT / "state_dict_shapes.json").read_text())


def one_line_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("name", NAMES)
def test_official_checkpoint_logits_through_evaluate(name, tmp_path, capsys, compat_files):
    tar, io = compat_files(name)
    out = tmp_path / "logits.pt"
    assert main(["--model_path", str(tar), "--arch", name, "--init_channels", "16", "--layers", "8",
                 "--inputs", str(io), "--dump_logits", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("FLOPs") < printed.index("max |logit")
    expected = torch.load(io, weights_only=True)["logits"]
    got = torch.load(out, weights_only=True)["logits"]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.fixture()
def cifar_test_set(tmp_path, compat_files) -> Path:
    """A CIFAR-10 folder whose test_batch holds the 4 stored inputs, de-normalised to uint8."""
    x = torch.load(compat_files("FairDARTS_a")[1], weights_only=True)["input"]
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    images = ((x * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    folder = tmp_path / "data" / "cifar-10-batches-py"  # outputs go beside data/, never inside it
    folder.mkdir(parents=True)
    batch = {b"data": images.reshape(len(images), -1).numpy(), b"labels": [0, 1, 2, 3],
             b"batch_label": b"testing batch 1 of 1", b"filenames": [b"x.png"] * len(images)}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": 4}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return tmp_path / "data"


def test_cifar_format_test_set_per_class_and_confusion(cifar_test_set, tmp_path, capsys, compat_files):
    tar, _ = compat_files("FairDARTS_a")
    png = tmp_path / "confusion.png"
    assert main(["--model_path", str(tar), "--arch", "FairDARTS_a", "--init_channels", "16", "--layers", "8",
                 "--dataset", "cifar10", "--data", str(cifar_test_set), "--device", "cpu", "--per_class",
                 "--confusion", str(png)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" in out and "(4 images" in out
    assert png.stat().st_size > 0


def test_onnx_export_matches_pytorch(tmp_path, capsys, compat_files):
    pytest.importorskip("onnx")
    tar, io = compat_files("FairDARTS_a")
    path = tmp_path / "net.onnx"
    assert main(["--model_path", str(tar), "--arch", "FairDARTS_a", "--init_channels", "16", "--layers", "8",
                 "--inputs", str(io), "--device", "cpu", "--export", "onnx", "--export_path", str(path)]) == 0
    out = capsys.readouterr().out
    assert path.stat().st_size > 0
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    blob = torch.load(io, weights_only=True)
    (logits,) = session.run(["logits"], {"input": blob["input"].numpy()})
    np.testing.assert_allclose(logits, blob["logits"].numpy(), atol=1e-4)
    assert "onnxruntime max |logit diff|" in out


def test_checkpoint_not_fitting_the_genotype_names_keys(capsys, compat_files):
    tar, io = compat_files("FairDARTS_a")
    err = one_line_error(["--model_path", str(tar), "--arch", "DARTS_V2", "--init_channels", "16", "--layers", "8",
                          "--inputs", str(io)], capsys)
    assert "does not fit --arch DARTS_V2" in err and "missing: cells.0._ops." in err and "unexpected: " in err
    err = one_line_error(["--model_path", str(tar), "--arch", "FairDARTS_a", "--init_channels", "16", "--layers", "9",
                          "--inputs", str(io)], capsys)
    assert "layers=9: missing: cells." in err


def test_corrupt_and_missing_files_fail_in_one_line(tmp_path, capsys, compat_files):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x80\x02not a checkpoint at all")
    assert "corrupt" in one_line_error(["--model_path", str(bad), "--arch", "FairDARTS_a"], capsys)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(compat_files("FairDARTS_a")[0].read_bytes()[:5000])
    one_line_error(["--model_path", str(truncated), "--arch", "FairDARTS_a"], capsys)
    tar, _ = compat_files("FairDARTS_a")
    assert "--arch" in one_line_error(["--model_path", str(tar)], capsys)  # official layout, not in the manifest
    err = one_line_error(["--model_path", str(tmp_path / "FairDARTS-b.tar")], capsys)
    assert "download_best_models.py FairDARTS-b.tar" in err
    assert "--model_path" in one_line_error([], capsys)
    assert "export" in one_line_error(["--model_path", str(tar), "--export", "tflite"], capsys)


def test_root_entry_runs(compat_files):
    tar, io = compat_files("DARTS_V2")
    proc = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "--model_path", str(tar), "--arch", "DARTS_V2",
                           "--init_channels", "16", "--layers", "8", "--inputs", str(io), "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    diff = float(proc.stdout.split("max |logit - reference logit| = ")[1].split()[0])
    assert diff <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_every_official_layout_loads_strictly(name, tmp_path):
    """Keys and shapes of all five official checkpoints (the repository keeps the weights of two)."""
    shapes = SHAPES[name]
    state = {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
             for k, s in shapes.items()}
    path = tmp_path / f"{name}.tar"
    torch.save({"state_dict": state, "epoch": 1, "best_acc_top1": 0.0}, path)
    loaded = load_model(path, arch=name, init_channels=16, layers=8, manifest={})
    assert loaded.source == "official" and loaded.meta["auxiliary"]
    assert {k: list(v.shape) for k, v in loaded.model.state_dict().items()} == shapes


@pytest.mark.parametrize("name", NAMES)
def test_shape_map_is_read_off_each_official_checkpoint(name, compat_files):
    state = torch.load(compat_files(name)[0], weights_only=True)["state_dict"]
    assert list(SHAPES[name]) == list(state) and all(SHAPES[name][k] == list(v.shape) for k, v in state.items())
