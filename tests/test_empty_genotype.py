"""A threshold derivation that no gate reached leaves empty cells. The search, the derive
command and train.py then say the same sentence: the gate range found and the two remedies
(``--parse_method darts``, or a threshold at most the highest gate), and both remedies work."""
from __future__ import annotations

import re

import numpy as np
import pytest

from fairdarts.errors import UserError
from fairdarts.search.cli import main as search_main
from fairdarts.search.derive_cli import main as derive_main
from fairdarts.search_space import FAIRDARTS_PRIMITIVES, derive, empty_cell_advice
from fairdarts.train.cli import main as train_main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--dataset", "synthetic", "--image_size", "8", "--subset", "16", "--batch_size", "8", "--init_channels", "4",
        "--layers", "3", "--device", "cpu", "--no-progress"]
ADVICE = re.compile(r"the normal and reduce cells are empty: no gate reached --op_threshold 0\.85 \(gates found: "
                    r"normal [0-9.]+-[0-9.]+, reduce [0-9.]+-[0-9.]+\); derive with --parse_method darts .*"
                    r"--parse_method threshold_sparse --op_threshold ([0-9.]+) \(at most the highest gate\)")


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory):
    """One epoch of a Fair DARTS search: its sigmoid gates stay near 0.5, below the 0.85 threshold."""
    run = tmp_path_factory.mktemp("search") / "run"
    assert search_main([*TINY, "--epochs", "1", "--save", str(run)]) == 0
    return run


def test_advice_names_the_range_and_a_threshold_that_keeps_an_edge():
    rng = np.random.default_rng(0)
    gates = rng.uniform(0.2, 0.7345, (14, 7))
    edges = derive(gates, FAIRDARTS_PRIMITIVES, "threshold_sparse", 0.85)
    assert edges == []
    advice = empty_cell_advice({"normal": (gates, edges), "reduce": (gates, [["sep_conv_3x3", 2, 0]])},
                               FAIRDARTS_PRIMITIVES, "threshold_sparse", 0.85)
    assert advice.startswith("the normal cell is empty: no gate reached --op_threshold 0.85 (gates found: normal ")
    assert f"-{gates.max():.3f})" in advice and "reduce" not in advice.split(";")[0]
    pick = float(re.search(r"--op_threshold ([0-9.]+) \(at most", advice).group(1))
    assert pick <= gates.max() and derive(gates, FAIRDARTS_PRIMITIVES, "threshold_sparse", pick)
    assert empty_cell_advice({"normal": (gates, [["skip_connect", 2, 0]])}, FAIRDARTS_PRIMITIVES,
                             "threshold_sparse", 0.85) is None


def test_search_derive_and_train_say_the_same_remedies(empty_run, capsys):
    log = (empty_run / "log.txt").read_text()
    said = ADVICE.search(log)
    assert said, log[-600:]
    assert f"`python train.py --arch {empty_run}` with them retrains it directly" in log

    capsys.readouterr()
    assert derive_main([str(empty_run)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Genotype(normal=[], ")
    assert err.count("\n") == 1 and err.startswith("warning: ")
    assert ADVICE.search(err).group(0) == said.group(0)

    with pytest.raises(UserError) as exc:
        train_main([*TINY, "--arch", str(empty_run), "--epochs", "1", "--save", str(empty_run.parent / "train")])
    assert ADVICE.search(str(exc.value)).group(0) == said.group(0)
    assert f"`python train.py --arch {empty_run} --parse_method darts`" in str(exc.value)
    assert not (empty_run.parent / "train").exists()


def test_both_remedies_derive_non_empty_cells(empty_run, capsys):
    pick = ADVICE.search((empty_run / "log.txt").read_text()).group(1)
    for flags in (["--parse_method", "darts"], ["--parse_method", "threshold_sparse", "--op_threshold", pick]):
        capsys.readouterr()
        assert derive_main([str(empty_run), *flags]) == 0
        out, err = capsys.readouterr()
        assert "normal=[]" not in out and "reduce=[]" not in out and err == ""
    run = empty_run.parent / "retrained"
    assert train_main([*TINY, "--arch", str(empty_run), "--parse_method", "darts", "--epochs", "1",
                       "--max_steps_per_epoch", "1", "--save", str(run)]) == 0
    assert (run / "model_best.pt").is_file()
