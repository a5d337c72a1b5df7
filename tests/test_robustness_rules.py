"""Reliability round 3 (docs/robustness_rules.md), in-process where the code path allows: one
rule for outputs outside a run folder, finite float options, sizes that fit the machine,
duplicate YAML keys, data that is unreadable, one-class or linked back into itself, bounded
genotypes, over-long paths and a full disk. The two cases that would hang if broken run in a
subprocess with a generous timeout as a guard."""
from __future__ import annotations

import dataclasses
import errno
import logging
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from fairdarts.ablations.config import DartsSearchConfig
from fairdarts.config import load_config_file, resolve_config
from fairdarts.data import load_dataset, make_dataloader
from fairdarts.data.datasets import MAX_IMAGE_PIXELS, load_image_folder, read_image
from fairdarts.errors import UserError
from fairdarts.evaluation.cli import main as evaluate_main
from fairdarts.run_dir import MetricsWriter, claim_run_dir
from fairdarts.safe_io import check_outputs, is_own_output, mark_output
from fairdarts.search.config import SearchConfig
from fairdarts.search.derive_cli import main as derive_main
from fairdarts.search_space import get_genotype
from fairdarts.search_space.genotypes import MAX_CELL_EDGES, MAX_CELL_NODES
from fairdarts.search_space.memory import training_memory
from fairdarts.search_space.operations import resolve_primitives
from fairdarts.train.cli import main as train_main
from fairdarts.train.config import TrainConfig
from fairdarts.visualize import main as visualize_main
from fixtures_data import write_cifar10, write_image_folder

REPO = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 120  # far above the second these take; only a hang reaches it
pytestmark = pytest.mark.usefixtures("one_thread")


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


def _run_guarded(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` from the repository, failing the test (not hanging it) past the guard."""
    try:
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                              timeout=HANG_GUARD_S, env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {HANG_GUARD_S} s: {code}")


# ----- outputs: never an input, never inside --data, never a foreign file without --overwrite --------
@pytest.fixture
def dataset_root(tmp_path: Path) -> Path:
    """A scratch dataset root with the idx file the issue's evaluate run replaced."""
    root = tmp_path / "fashion"
    root.mkdir()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"the test set")
    (tmp_path / "m.pt").write_bytes(b"a checkpoint")
    return root


@pytest.mark.parametrize("flag, target", [
    ("--dump_logits", "{data}/t10k-images-idx3-ubyte.gz"),  # the case: the test set itself
    ("--confusion", "{data}/new.png"),                       # a new file inside the data root
    ("--dump_logits", "{tmp}/link/t10k-images-idx3-ubyte.gz"),  # through a symbolic link to the root
    ("--export_path", "{tmp}/hard.onnx"),                    # a hard link of a data file, outside the root
])
def test_an_output_inside_the_data_root_is_refused_and_the_data_kept(tmp_path, dataset_root, flag, target):
    (tmp_path / "link").symlink_to(dataset_root)
    (tmp_path / "hard.onnx").hardlink_to(dataset_root / "t10k-images-idx3-ubyte.gz")
    out = target.format(data=dataset_root, tmp=tmp_path)
    extra = ["--export", "onnx", "--overwrite"] if flag == "--export_path" else []
    with pytest.raises(UserError) as exc:
        evaluate_main(["--model_path", str(tmp_path / "m.pt"), "--dataset", "fashion_mnist", "--data",
                       str(dataset_root), flag, out, *extra])
    assert "--data" in _one_line(exc) and "reads" in str(exc.value)
    assert (dataset_root / "t10k-images-idx3-ubyte.gz").read_bytes() == b"the test set"
    assert sorted(p.name for p in dataset_root.iterdir()) == ["t10k-images-idx3-ubyte.gz"]


def test_the_default_export_path_beside_a_checkpoint_in_the_data_root_is_refused(dataset_root):
    model = dataset_root / "m.pt"
    model.write_bytes(b"a checkpoint")
    with pytest.raises(UserError, match="--data"):
        evaluate_main(["--model_path", str(model), "--dataset", "fashion_mnist", "--data", str(dataset_root),
                       "--export", "onnx"])


def test_an_existing_file_is_replaced_only_with_overwrite_or_when_the_tool_wrote_it(tmp_path):
    mine = tmp_path / "notes.png"
    mine.write_bytes(b"my own picture")
    with pytest.raises(UserError, match="--overwrite"):
        check_outputs([("--confusion", mine)], [])
    check_outputs([("--confusion", mine)], [], overwrite=True)
    mark_output(mine, "evaluate.py")
    if not is_own_output(mine):
        pytest.skip("this file system keeps no extended attributes")
    check_outputs([("--confusion", mine)], [])  # the tool's earlier output: no --overwrite needed


def test_derive_writes_outside_the_run_folder_and_replaces_its_own_output(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("search_space: cell\nprimitives: fairdarts\n")
    for cell in ("normal", "reduce"):
        np.save(run / f"{cell}_weight.npy", np.linspace(0, 1, 14 * 7, dtype=np.float32).reshape(14, 7))
    with pytest.raises(UserError, match="run folder"):
        derive_main([str(run), "--parse_method", "darts", "--out", str(run / "derived.json")])
    foreign = tmp_path / "g.json"
    foreign.write_text("my notes")
    with pytest.raises(UserError, match="--overwrite"):
        derive_main([str(run), "--parse_method", "darts", "--out", str(foreign)])
    assert foreign.read_text() == "my notes"
    assert derive_main([str(run), "--parse_method", "darts", "--out", str(foreign), "--overwrite"]) == 0
    if is_own_output(foreign):
        assert derive_main([str(run), "--parse_method", "threshold_edge", "--out", str(foreign)]) == 0
    assert get_genotype(foreign).form in ("darts", "fairdarts")


def test_visualize_out_onto_a_file_is_one_line_and_reruns_replace_its_own_pictures(tmp_path, capsys):
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0")
    with pytest.raises(UserError, match="is a file") as exc:
        visualize_main(["--arch", "FairDARTS_a", "--out", str(victim)])
    _one_line(exc)
    assert victim.read_text() == "root:x:0:0"
    out = tmp_path / "cells"
    assert visualize_main(["--arch", "FairDARTS_a", "--out", str(out)]) == 0
    if is_own_output(out / "FairDARTS_a_normal.dot"):
        assert visualize_main(["--arch", "FairDARTS_a", "--out", str(out)]) == 0
    (out / "FairDARTS_a_normal.dot").unlink()
    (out / "FairDARTS_a_normal.dot").write_text("someone else's graph")
    with pytest.raises(UserError, match="--overwrite"):
        visualize_main(["--arch", "FairDARTS_a", "--out", str(out)])
    assert (out / "FairDARTS_a_normal.dot").read_text() == "someone else's graph"


# ----- options ------------------------------------------------------------------------------------
def _float_fields(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls) if "float" in str(f.type)]


@pytest.mark.parametrize("config_cls", [SearchConfig, DartsSearchConfig, TrainConfig])
@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_every_float_option_refuses_nan_and_infinities_by_name(tmp_path, config_cls, value):
    fields = _float_fields(config_cls)
    assert fields
    for name in fields:
        with pytest.raises(UserError, match=rf"^{name} must be a finite number"):
            resolve_config(config_cls, [f"--{name}={value}"], "prog", "")
        yaml_value = {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[value]
        preset = tmp_path / "c.yaml"
        preset.write_text(f"{name}: {yaml_value}\n")
        with pytest.raises(UserError, match=rf"^{name} must be a finite number"):
            resolve_config(config_cls, ["--config", str(preset)], "prog", "")


def test_a_yaml_key_given_twice_is_refused_naming_it_and_its_lines(tmp_path):
    preset = tmp_path / "c.yaml"
    preset.write_text("epochs: 3\nseed: 1\nepochs: 5\n")
    with pytest.raises(UserError, match=r"key 'epochs' is given twice, on lines 1 and 3") as exc:
        load_config_file(SearchConfig, preset)
    _one_line(exc)
    preset.write_text("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n")  # a merge key is not a duplicate
    with pytest.raises(UserError, match="unknown option"):
        load_config_file(SearchConfig, preset)


def test_a_network_too_large_for_memory_is_one_line_before_any_folder(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UserError) as exc:
        train_main(["--dataset", "synthetic", "--init_channels", "100000", "--device", "cpu", "--save", str(run)])
    line = _one_line(exc)
    assert "--init_channels 100000" in line and "GiB of activations" in line and "free on cpu" in line
    assert not run.exists()


def test_the_memory_bound_grows_with_batch_and_width_and_is_below_the_real_weights():
    ops = resolve_primitives("fairdarts")
    small, double = training_memory(ops, 8, 32, 16, 8), training_memory(ops, 16, 32, 16, 8)
    assert double.activations == 2 * small.activations and double.weights == small.weights
    assert training_memory(ops, 8, 32, 32, 8).weights > 3 * small.weights
    from fairdarts import build_network
    net = build_network("FairDARTS_a", init_channels=16, layers=8)
    real = sum(p.numel() for p in net.parameters()) * 4 * 3
    assert training_memory(get_genotype("FairDARTS_a"), 1, 32, 16, 8).weights <= real


def test_counts_fit_the_machine_threads_workers_and_layers(tmp_path, monkeypatch):
    from fairdarts.threads import PER_CPU, machine_cpus, set_threads
    with pytest.raises(UserError, match="more than 4 per CPU"):
        set_threads(PER_CPU * machine_cpus() + 1)
    monkeypatch.setenv("OMP_NUM_THREADS", str(10**6))
    with pytest.raises(UserError, match="OMP_NUM_THREADS=1000000"):
        set_threads(None)
    write_image_folder(tmp_path, splits=("train",))
    with pytest.raises(UserError, match="--workers 1000000"):
        make_dataloader(load_image_folder("folder", tmp_path, "train"), 2, False, workers=10**6, seed=0)
    for config_cls in (SearchConfig, TrainConfig):
        with pytest.raises(UserError, match="layers must be in"):
            resolve_config(config_cls, ["--layers", "100000"], "prog", "")


def test_no_option_holds_a_nul_character(tmp_path):
    preset = tmp_path / "c.yaml"
    preset.write_text('save: "/tmp/a\\0b"\n')
    with pytest.raises(UserError, match="save holds a NUL character"):
        load_config_file(SearchConfig, preset)


def test_a_device_or_pipe_is_never_an_output_even_with_overwrite(tmp_path):
    os.mkfifo(tmp_path / "p.png")
    for target in (tmp_path / "p.png", Path("/dev/null")):
        with pytest.raises(UserError, match="device, pipe or socket"):
            check_outputs([("--confusion", target)], [], overwrite=True)


def test_evaluate_refuses_a_test_set_of_other_channels_in_one_line(tmp_path):
    from fairdarts.search_space import NetworkCIFAR
    net = NetworkCIFAR(4, 10, 3, False, get_genotype("FairDARTS_a"), in_channels=1, image_size=8)
    torch.save({"state_dict": net.state_dict()}, tmp_path / "m.pt")
    with pytest.raises(UserError, match="1-channel images .* 3-channel images") as exc:
        evaluate_main(["--model_path", str(tmp_path / "m.pt"), "--arch", "FairDARTS_a", "--init_channels", "4",
                       "--layers", "3", "--dataset", "synthetic", "--device", "cpu", "--subset", "4"])
    _one_line(exc)


# ----- data -----------------------------------------------------------------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (its data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("size, says", [((30000, 30000), "decompression bomb"), ((9000, 9000), "pixels")])
def test_bombs_and_oversized_images_are_unreadable_images(tmp_path, size, says):
    path = tmp_path / "big.png"
    path.write_bytes(_png_claiming(*size))
    assert size[0] * size[1] > MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=says):
        read_image(str(path))


def test_unreadable_images_are_counted_and_too_many_stop_the_pass(tmp_path, caplog):
    write_image_folder(tmp_path, splits=("train",), per_class=10)
    (tmp_path / "train" / "cat" / "bomb.png").write_bytes(_png_claiming(30000, 30000))
    data = load_image_folder("folder", tmp_path, "train", image_size=8)
    loader = make_dataloader(data, batch_size=7, shuffle=False, workers=0, seed=0)
    with caplog.at_level(logging.WARNING, logger="fairdarts"):
        assert sum(len(y) for _, y in loader) == 20
    assert "1 of the 21 images of this pass were unreadable and skipped" in caplog.text
    for i in range(2):
        (tmp_path / "train" / "dog" / f"broken{i}.png").write_bytes(b"not a png")
    data = load_image_folder("folder", tmp_path, "train", image_size=8)  # 3 of 23 unreadable: over 10%
    with pytest.raises(UserError, match=r"3 of the 23 images .* unreadable \(more than 10%"):
        list(make_dataloader(data, batch_size=23, shuffle=False, workers=0, seed=0))


def test_a_folder_where_no_image_can_be_read_is_an_error_at_its_first_batch(tmp_path):
    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(20):
            (tmp_path / "train" / c / f"{i}.png").write_bytes(b"garbage")
    loader = make_dataloader(load_image_folder("folder", tmp_path, "train", image_size=8), batch_size=8,
                             shuffle=False, workers=0, seed=0)
    with pytest.raises(UserError, match="unreadable"):
        next(iter(loader))


def test_one_class_is_an_error_for_training_and_a_warning_for_evaluation(tmp_path, caplog):
    write_image_folder(tmp_path, classes=("only",))
    with pytest.raises(UserError, match="1 class only") as exc:
        load_dataset("folder", str(tmp_path), "train")
    _one_line(exc)
    with caplog.at_level(logging.WARNING, logger="fairdarts"):
        assert len(load_dataset("folder", str(tmp_path), "test")) == 2
    assert "1 class only" in caplog.text


def test_a_folder_linking_back_to_its_parent_is_read_once_with_one_warning(tmp_path, caplog):
    write_image_folder(tmp_path, splits=("train",), per_class=3)
    (tmp_path / "train" / "cat" / "up").symlink_to("..")
    (tmp_path / "train" / "dog" / "again").symlink_to(tmp_path / "train" / "cat")
    with caplog.at_level(logging.WARNING, logger="fairdarts"):
        data = load_image_folder("folder", tmp_path, "train", image_size=8)
    assert len(data) == 6
    assert len([r for r in caplog.records if "folder already read" in r.getMessage()]) == 1


def test_a_fifo_named_like_an_image_neither_joins_the_dataset_nor_blocks(tmp_path):
    write_image_folder(tmp_path, splits=("train",), per_class=2)
    fifo = tmp_path / "train" / "cat" / "x.png"
    os.mkfifo(fifo)
    code = ("from fairdarts.data.datasets import load_image_folder, read_image\n"
            f"d = load_image_folder('folder', {str(tmp_path)!r}, 'train', image_size=8)\n"
            f"assert {str(fifo)!r} not in [p for p, _ in d.samples], d.samples\n"
            "try:\n"
            f"    read_image({str(fifo)!r})\n"
            "except ValueError as exc:\n"
            "    print('refused:', exc)\n")
    result = _run_guarded(code)
    assert result.returncode == 0 and "refused: not a regular file" in result.stdout, result.stderr


@pytest.mark.parametrize("labels", [[1e30] * 2, [b"x", b"y"], 7])
def test_cifar_labels_that_are_not_integers_are_one_line(tmp_path, labels):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"] = labels
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError, match="integer") as exc:
        load_dataset("cifar10", str(tmp_path), "train")
    _one_line(exc)


# ----- genotypes ---------------------------------------------------------------------------------------
def test_a_20000_edge_genotype_is_refused_at_validation_naming_the_bound(tmp_path):
    edges = [["sep_conv_3x3", 2 + k % 4, k % 2] for k in range(20000)]
    path = tmp_path / "huge.json"
    path.write_text(str({"normal": edges, "reduce": edges}).replace("'", '"'))
    assert path.stat().st_size > 400_000
    result = _run_guarded(f"from fairdarts.search_space import get_genotype\nget_genotype({str(path)!r})")
    assert f"at most {MAX_CELL_NODES} intermediate nodes and {MAX_CELL_EDGES} edges" in result.stderr
    assert "20000 edges" in result.stderr


@pytest.mark.parametrize("genotype, says", [
    ({"form": "darts-reweight", "normal": [["sep_conv_3x3", 0, float("nan")], ["skip_connect", 1, 1.0]],
      "normal_concat": [2], "reduce": [["sep_conv_3x3", 0, 1.0], ["skip_connect", 1, "x"]], "reduce_concat": [2]},
     "weight must be a finite number"),
    ({"normal": [["sep_conv_3x3", 10**9, 0]], "reduce": [["skip_connect", 2, 0]]}, "'to' node 1000000000"),
    ({"form": "fairdarts", "normal": [["sep_conv_3x3"]], "reduce": []}, "list of 3"),
    ({"normal": [["sep_conv_3x3", 0]] * 2, "normal_concat": list(range(10**5)), "reduce": [["skip_connect", 0]] * 2,
      "reduce_concat": [2]}, "names 100000 nodes"),
])
def test_genotype_nodes_edges_and_concats_are_bounded(genotype, says):
    import json
    with pytest.raises(UserError, match=says) as exc:
        get_genotype(json.dumps(genotype))
    _one_line(exc)


# ----- paths and a full disk ------------------------------------------------------------------------------
def test_a_300_character_save_path_is_one_line(tmp_path):
    with pytest.raises(UserError, match="more than the 255") as exc:
        claim_run_dir(tmp_path / ("a" * 300), resume=False)
    _one_line(exc)
    with pytest.raises(UserError, match="more than the 255"):
        evaluate_main(["--model_path", str(tmp_path / ("m" * 300)), "--dataset", "synthetic"])


def test_a_full_disk_at_the_run_folder_claim_is_one_line(tmp_path, monkeypatch):
    class Full:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self) -> "Full":
            return self

        def __exit__(self, *exc) -> None:
            pass

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", Full)
    with pytest.raises(UserError, match="No space left on device") as exc:
        claim_run_dir(tmp_path / "run", resume=False)
    _one_line(exc)


def test_a_tensorboard_writer_that_cannot_be_created_is_one_line(tmp_path):
    (tmp_path / "tensorboard").write_text("a file where the folder goes")
    with pytest.raises(UserError, match="cannot write") as exc:
        MetricsWriter(tmp_path)
    _one_line(exc)
