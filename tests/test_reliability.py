"""Reliability round 2, the parts that need no separate process: outputs never replace inputs,
bounded reads, a last batch of one image, corrupt images in a folder, verified downloads."""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fairdarts.checkpoint import load_checkpoint
from fairdarts.config import load_config_file
from fairdarts.data import make_dataloader
from fairdarts.data.datasets import load_image_folder
from fairdarts.errors import UserError
from fairdarts.safe_io import (
    MAX_YAML_ALIASES, check_outputs, check_writable, load_yaml, read_text_limited, same_file, short_repr,
)
from fairdarts.search.config import SearchConfig
from fairdarts.search_space import NetworkCIFAR, get_genotype
from fairdarts.train.cli import main as train_main
from fairdarts.train.step import TrainStep

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


# ----- outputs against inputs ---------------------------------------------------------------
def test_same_file_sees_links_and_relative_paths(tmp_path, monkeypatch):
    a = tmp_path / "a.pt"
    a.write_bytes(b"x")
    (tmp_path / "hard.pt").hardlink_to(a)
    (tmp_path / "soft.pt").symlink_to(a)
    monkeypatch.chdir(tmp_path)
    assert same_file("a.pt", a) and same_file(tmp_path / "hard.pt", a) and same_file(tmp_path / "soft.pt", a)
    assert same_file(tmp_path / "sub" / ".." / "a.pt", a)
    assert not same_file(tmp_path / "b.pt", a)


def test_check_outputs_names_the_input_and_lets_other_paths_pass(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    with pytest.raises(UserError, match=r"--dump_logits .* is or lies in the --model_path file"):
        check_outputs([("--dump_logits", model)], [("--model_path", model)])
    with pytest.raises(UserError, match="both name"):
        check_outputs([("--a", tmp_path / "o"), ("--b", tmp_path / "o")], [])
    with pytest.raises(UserError, match="is a folder"):
        check_outputs([("--a", tmp_path)], [])
    check_outputs([("--dump_logits", tmp_path / "logits.pt"), ("--confusion", None)], [("--model_path", model)])


def test_check_writable_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        check_writable(tmp_path / "f" / "out.png", "--confusion")
    check_writable(tmp_path / "new" / "deeper" / "out.png", "--confusion")  # made when written


# ----- bounded reads ----------------------------------------------------------------------------
def test_reads_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("a: 1\n" * 10)
    assert read_text_limited(big, "config file") == "a: 1\n" * 10
    with pytest.raises(UserError, match="more than the 20 a config file may have"):
        read_text_limited(big, "config file", limit=20)
    with pytest.raises(UserError, match="not a regular file"):
        read_text_limited("/dev/zero", "config file")
    with pytest.raises(UserError, match="is a folder"):
        read_text_limited(tmp_path, "config file")


def test_yaml_aliases_are_capped_and_reprs_are_short():
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    bomb = "a: &a [1]\n" + "".join(f"k{i}: *a\n" for i in range(MAX_YAML_ALIASES + 1))
    with pytest.raises(yaml.YAMLError, match="aliases"):
        load_yaml(bomb)
    nested: list = [1] * 10
    for _ in range(40):
        nested = [nested] * 10  # 10**40 leaves when written out in full
    assert len(short_repr(nested)) < 200


def test_another_commands_config_is_read_for_its_known_options(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("primitives: darts\nnoise_darts: true\n")
    with pytest.raises(UserError, match="unknown option 'noise_darts'"):
        load_config_file(SearchConfig, path)
    assert load_config_file(SearchConfig, path, ignore_unknown=True).primitives == "darts"


# ----- a last batch of one image ------------------------------------------------------------
TINY = ["--dataset", "synthetic", "--image_size", "8", "--batch_size", "8", "--init_channels", "4", "--layers", "3",
        "--device", "cpu", "--report_freq", "100", "--seed", "1", "--epochs", "1", "--no-progress"]


def test_a_last_batch_of_one_image_is_dropped_and_the_epoch_trains(tmp_path):
    run = tmp_path / "run"
    assert train_main([*TINY, "--subset", "17", "--save", str(run)]) == 0  # 2 batches of 8, then 1 image
    log = (run / "log.txt").read_text()
    assert "would hold one image" in log and "it is dropped" in log
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1


def test_accum_steps_is_checked_against_the_per_rank_batch(tmp_path):
    with pytest.raises(UserError, match="--accum_steps 8 splits each rank's batch of 8 images"):
        train_main([*TINY, "--subset", "16", "--accum_steps", "8", "--save", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_a_short_last_batch_is_cut_into_micro_batches_of_two_at_least():
    torch.manual_seed(0)
    net = NetworkCIFAR(4, 10, 3, True, get_genotype("FairDARTS_a"), image_size=8)
    net.drop_path_prob = 0.0
    step = TrainStep(net.train(), torch.optim.SGD(net.parameters(), 0.01), 0.4, 5.0, accum_steps=4)
    x, y = torch.randn(3, 3, 8, 8), torch.tensor([0, 1, 2])
    assert step((x, y)).n == 3  # one micro-batch of 3 instead of micro-batches of 1
    assert step((x[:1], y[:1])).n == 0  # a lone image: no step, no crash


# ----- corrupt images in an ImageFolder tree ---------------------------------------------------
def _image_tree(root: Path) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for c, colour in enumerate(("red", "blue")):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(6):  # 13 files, one broken: under the 10% of unreadable images a pass may have
                Image.new("RGB", (12, 12), colour).save(folder / f"{i}.png")
    bad = root / "train" / "class1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return bad


def test_a_corrupt_image_is_skipped_with_one_warning_naming_it(tmp_path, caplog):
    bad = _image_tree(tmp_path)
    data = load_image_folder("folder", tmp_path, "train", image_size=8)
    loader = make_dataloader(data, batch_size=4, shuffle=False, workers=0, seed=0)
    with caplog.at_level(logging.WARNING, logger="fairdarts"):
        for _ in range(2):  # two epochs: one warning only
            sizes = [len(y) for _, y in loader]
            assert sum(sizes) == 12  # 13 files, the broken one left out
    warnings = [r.getMessage() for r in caplog.records if "unreadable image" in r.getMessage()]
    assert len(warnings) == 1 and str(bad) in warnings[0]


def test_a_training_run_goes_on_past_a_corrupt_image(tmp_path):
    bad = _image_tree(tmp_path / "data")
    run = tmp_path / "run"
    args = ["--dataset", "folder", "--data", str(tmp_path / "data"), "--image_size", "8", "--batch_size", "4",
            "--init_channels", "4", "--layers", "3", "--device", "cpu", "--epochs", "1", "--workers", "1",
            "--no-progress", "--no-auxiliary", "--save", str(run)]
    assert train_main(args) == 0
    assert f"skipping unreadable image {bad}" in (run / "log.txt").read_text()


# ----- verified downloads -------------------------------------------------------------------
def _download_module():
    spec = importlib.util.spec_from_file_location("download_best_models", REPO / "scripts" / "download_best_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_bad_download_never_replaces_the_file_there(tmp_path, capsys):
    dl = _download_module()
    entry = {"arch": "FairDARTS_a", "init_channels": 4, "layers": 3}
    good = NetworkCIFAR(4, 10, 3, False, get_genotype("FairDARTS_a"))
    path = tmp_path / "FairDARTS-a.tar"
    torch.save({"state_dict": good.state_dict()}, path)
    before = path.read_bytes()
    with pytest.raises(UserError, match="is not a valid checkpoint.*the existing .* is kept"):
        dl.download_verified("http://x/FairDARTS-a.tar", path, entry, fetch_bytes=lambda url: b"<html>not found</html>")
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["FairDARTS-a.tar"]
    buffer = __import__("io").BytesIO()
    torch.save({"state_dict": good.state_dict(), "epoch": 7}, buffer)
    assert "loads strictly" in dl.download_verified("http://x/FairDARTS-a.tar", path, entry,
                                                    fetch_bytes=lambda url: buffer.getvalue())
    assert load_checkpoint(path)["epoch"] == 7 and sorted(os.listdir(tmp_path)) == ["FairDARTS-a.tar"]


def test_nan_gate_values_are_refused_by_derivation():
    from fairdarts.search_space import FAIRDARTS_PRIMITIVES, derive

    w = np.full((14, len(FAIRDARTS_PRIMITIVES)), 0.5)
    w[0, 0] = np.nan
    with pytest.raises(UserError, match="1 NaN or infinite values"):
        derive(w, FAIRDARTS_PRIMITIVES, "darts")


def test_an_unfinished_search_folder_is_re_derived_without_its_genotype_json(tmp_path):
    """A search still running (or killed) has gate values but no genotype.json yet."""
    from fairdarts.config import save_config
    from fairdarts.train.config import TrainConfig
    from fairdarts.train.trainer import resolve_arch

    save_config(SearchConfig(save=str(tmp_path)), tmp_path / "config.yaml")
    rng = np.random.default_rng(0)
    for name in ("normal_weight.npy", "reduce_weight.npy"):
        np.save(tmp_path / name, rng.uniform(size=(14, 7)).astype(np.float32))
    cfg = TrainConfig(arch=str(tmp_path), parse_method="darts").resolved()
    assert cfg.network == "cifar" and resolve_arch(cfg).form == "darts"

