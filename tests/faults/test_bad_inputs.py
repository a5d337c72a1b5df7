"""Bad input to every command line: one line on stderr that says what is wrong and what to do,
a non-zero exit, no traceback, and every file that was there before left byte-identical.

Each row names the command, its arguments (``{d}`` is the row's own scratch folder), what to
put in that folder first, and a word the message must contain. A command that would start a
run in ``{d}/out`` must fail before making it: nothing is written before the inputs are valid.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from fairdarts.config import save_config
from fairdarts.search.config import SearchConfig
from fairdarts.search_space import NetworkCIFAR, get_genotype

from .harness import COUNTS, Launcher, assert_one_line_error, run_fresh, tree_hashes
from .runs import TINY_DATA, TINY_SEARCH

pytestmark = pytest.mark.faults

PWNED = "pwned"  # the file the malicious checkpoint would create if it were ever unpickled


class Payload:
    """Unpickling this calls ``open(path, 'w')``: any code could stand there."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious(path: Path) -> None:
    torch.save({"state_dict": Payload(path.parent / PWNED), "epoch": 1}, path)


def truncated(path: Path) -> None:
    tiny_official(path)
    path.write_bytes(path.read_bytes()[:300])


def random_bytes(path: Path) -> None:
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))


def tiny_official(path: Path, arch: str = "FairDARTS_a") -> None:
    """An official-layout checkpoint of a 4-channel, 3-cell network of ``arch``."""
    net = NetworkCIFAR(4, 10, 3, False, get_genotype(arch), in_channels=1, image_size=8)
    torch.save({"state_dict": net.state_dict(), "epoch": 1}, path)


def search_run(make_checkpoint: Callable[[Path], None]) -> Callable[[Path], None]:
    """A search run folder (saved config.yaml) whose checkpoint.pt ``make_checkpoint`` writes."""
    def setup(d: Path) -> None:
        run = d / "run"
        run.mkdir()
        save_config(SearchConfig(dataset="synthetic", subset=48, image_size=8, init_channels=4, layers=3,
                                 batch_size=8, device="cpu", save=str(run)), run / "config.yaml")
        make_checkpoint(run / "checkpoint.pt")
        for cell in ("normal", "reduce"):
            np.save(run / f"{cell}_weight.npy", np.full((14, 7), 0.5, dtype=np.float32))
    return setup


def file(name: str, text: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_text(text)


def genotype_json(**changes) -> str:
    g = get_genotype("FairDARTS_a").to_dict()
    for key, value in changes.items():
        if value is None:
            g.pop(key)
        else:
            g[key] = value
    return json.dumps(g)


def _bad_op(d: Path) -> None:
    g = json.loads(genotype_json())
    g["normal"][0][0] = "sep_conv_9x9"
    (d / "g.json").write_text(json.dumps(g))


def _bad_node(d: Path) -> None:
    g = json.loads(genotype_json())
    g["normal"][0][-1] = 9
    (d / "g.json").write_text(json.dumps(g))


def _existing_run(d: Path) -> None:
    (d / "run").mkdir()
    (d / "run" / "log.txt").write_text("2024-01-01 00:00:00 a finished run\n")
    (d / "run" / "checkpoint.pt").write_bytes(b"a checkpoint")


def _foreign_folder(d: Path) -> None:
    (d / "data").mkdir()
    (d / "data" / "log.txt").write_text("my own notes\n")
    (d / "data" / "images.bin").write_bytes(b"x")


def _dead_run(d: Path) -> None:
    run = d / "run"
    run.mkdir()
    save_config(SearchConfig(save=str(run)), run / "config.yaml")
    (run / "log.txt").write_text("2024-01-01 00:00:00 search config: ...\n")


def _darts_run(d: Path) -> None:
    """A darts/train_search.py run folder (its config has the ablation options)."""
    from fairdarts.ablations.config import DartsSearchConfig

    run = d / "run"
    run.mkdir()
    save_config(DartsSearchConfig(dataset="synthetic", subset=48, image_size=8, init_channels=4, layers=3,
                                  batch_size=8, device="cpu", save=str(run)), run / "config.yaml")
    tiny_official(run / "checkpoint.pt")


def _with_comment(setup: Callable[[Path], None]) -> Callable[[Path], None]:
    """``setup``, then a user's comment at the top of the run's config.yaml."""
    def wrapped(d: Path) -> None:
        setup(d)
        path = d / "run" / "config.yaml"
        path.write_text("# my notes on this run\n" + path.read_text())
    return wrapped


def _hard_link(d: Path) -> None:
    tiny_official(d / "m.pt")
    (d / "link.pt").hardlink_to(d / "m.pt")


def _nan_official(d: Path) -> None:
    net = NetworkCIFAR(4, 10, 3, False, get_genotype("FairDARTS_a"), in_channels=1, image_size=8)
    state = net.state_dict()
    state["classifier.weight"][0, 0] = float("nan")
    torch.save({"state_dict": state, "epoch": 1}, d / "m.pt")


def _nan_gates(d: Path) -> None:
    search_run(tiny_official)(d)
    w = np.full((14, 7), 0.5, dtype=np.float32)
    w[3, 2] = np.nan
    np.save(d / "run" / "normal_weight.npy", w)


def _inputs(x: torch.Tensor, **extra: torch.Tensor) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        tiny_official(d / "m.pt")
        torch.save({"input": x, **extra}, d / "in.pt")
    return setup


def _corrupt_gzip(d: Path) -> None:
    (d / "fm").mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (d / "fm" / f"{stem}.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 64)


ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(12)) + "epochs: *m\n"


def _empty(d: Path) -> None:
    (d / "empty").mkdir()


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    entry: str
    argv: tuple[str, ...]
    setup: Callable[[Path], None] | None = None
    says: str = ""  # a word the message must contain (case-insensitive)


TS, TR, EV = "train_search.py", "train.py", "evaluate.py"
SUMMARY, DERIVE = "fairdarts.summary", "fairdarts.search.derive_cli"
S = tuple(TINY_SEARCH) + ("--epochs", "1", "--save", "{d}/out")
T = tuple(TINY_DATA) + ("--subset", "16", "--init_channels", "4", "--layers", "3", "--epochs", "1", "--save", "{d}/out")
CASES = [
    # ----- flags ------------------------------------------------------------------------
    Case("search-unknown-flag", TS, (*S, "--epoch", "3"), says="--epoch"),
    Case("search-zero-batch", TS, (*S, "--batch_size", "0"), says="batch_size"),
    Case("search-negative-channels", TS, (*S, "--init_channels", "-4"), says="init_channels"),
    Case("search-portion-above-1", TS, (*S, "--train_portion", "1.5"), says="train_portion"),
    Case("search-portion-zero", TS, (*S, "--train_portion", "0"), says="train_portion"),
    Case("search-threshold-above-1", TS, (*S, "--op_threshold", "1.5"), says="op_threshold"),
    Case("search-unknown-op", TS, (*S, "--primitives", "sep_conv_3x3,conv_9x9"), says="conv_9x9"),
    Case("search-unknown-gate", TS, (*S, "--gate", "tanh"), says="gate"),
    Case("train-zero-layers", TR, (*T, "--layers", "0"), says="layers"),
    Case("train-drop-path-1", TR, (*T, "--drop_path_prob", "1"), says="drop_path_prob"),
    Case("train-negative-epochs", TR, (*T, "--epochs", "-1"), says="epochs"),
    Case("evaluate-no-model", EV, ("--batch_size", "4"), says="model_path"),
    Case("evaluate-negative-batch", EV, ("--model_path", "{d}/m.pt", "--batch_size", "-1"), says="batch_size"),
    Case("summary-no-arch", SUMMARY, (), says="arch"),
    Case("summary-zero-layers", SUMMARY, ("--arch", "FairDARTS_a", "--layers", "0"), says="layers"),
    Case("derive-bad-method", DERIVE, ("{d}", "--parse_method", "best"), says="parse_method"),
    Case("derive-threshold-above-1", DERIVE, ("{d}/run", "--op_threshold", "1.5"), search_run(tiny_official),
         says="threshold"),
    # ----- genotypes --------------------------------------------------------------------
    Case("train-unknown-arch", TR, (*T, "--arch", "FairDARTS_z"), says="FairDARTS_z"),
    Case("summary-unknown-arch", SUMMARY, ("--arch", "DARTS_V9"), says="DARTS_V9"),
    Case("train-genotype-text-bad-op", TR, (*T, "--arch", "Genotype(normal=[('sep_conv_9x9', 0), ('skip_connect', 1)], "
                                           "normal_concat=[2], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], "
                                           "reduce_concat=[2])"), says="sep_conv_9x9"),
    Case("summary-genotype-text-syntax", SUMMARY, ("--arch", "Genotype(normal=[('sep_conv_3x3', 0"), says="genotype"),
    Case("train-genotype-json-bad-op", TR, (*T, "--arch", "{d}/g.json"), _bad_op, says="sep_conv_9x9"),
    Case("train-genotype-json-node-range", TR, (*T, "--arch", "{d}/g.json"), _bad_node, says="9"),
    Case("summary-genotype-json-missing-key", SUMMARY, ("--arch", "{d}/g.json"),
         file("g.json", genotype_json(reduce=None)), says="reduce"),
    Case("summary-genotype-json-not-json", SUMMARY, ("--arch", "{d}/g.json"), file("g.json", "{normal: [}"),
         says="g.json"),
    # ----- configs ----------------------------------------------------------------------
    Case("search-config-unknown-key", TS, (*S, "--config", "{d}/c.yaml"), file("c.yaml", "batchsize: 8\n"),
         says="batchsize"),
    Case("train-config-wrong-type", TR, (*T, "--config", "{d}/c.yaml"), file("c.yaml", "epochs: many\n"),
         says="epochs"),
    Case("search-config-not-yaml", TS, (*S, "--config", "{d}/c.yaml"), file("c.yaml", "epochs: [1\n"), says="yaml"),
    Case("search-config-missing", TS, (*S, "--config", "{d}/none.yaml"), says="none.yaml"),
    # ----- data -------------------------------------------------------------------------
    Case("search-missing-data-folder", TS, (*S, "--dataset", "folder", "--data", "{d}/nowhere"), says="nowhere"),
    Case("train-empty-data-folder", TR, (*T, "--dataset", "fashion_mnist", "--data", "{d}/empty"), _empty,
         says="not found"),
    Case("search-empty-image-folder", TS, (*S, "--dataset", "folder", "--data", "{d}/empty"), _empty, says="images"),
    # ----- checkpoints ------------------------------------------------------------------
    Case("search-resume-truncated", TS, ("--resume", "{d}/run"), search_run(truncated), says="checkpoint"),
    Case("search-resume-random-bytes", TS, ("--resume", "{d}/run"), search_run(random_bytes), says="checkpoint"),
    Case("search-resume-malicious", TS, ("--resume", "{d}/run"), search_run(malicious), says="not loaded"),
    Case("search-resume-nothing-there", TS, ("--resume", "{d}/nowhere"), says="nowhere"),
    Case("search-resume-changes-config", TS, ("--resume", "{d}/run", "--learning_rate", "1"), search_run(tiny_official),
         says="learning_rate"),
    Case("evaluate-truncated", EV, ("--model_path", "{d}/m.pt"), lambda d: truncated(d / "m.pt"), says="m.pt"),
    Case("evaluate-random-bytes", EV, ("--model_path", "{d}/m.pt"), lambda d: random_bytes(d / "m.pt"), says="m.pt"),
    Case("evaluate-malicious", EV, ("--model_path", "{d}/m.pt"), lambda d: malicious(d / "m.pt"), says="not loaded"),
    Case("evaluate-missing", EV, ("--model_path", "{d}/m.pt"), says="m.pt"),
    Case("evaluate-other-genotype", EV, ("--model_path", "{d}/m.pt", "--arch", "DARTS_V2", "--init_channels", "4",
                                         "--layers", "3", "--inputs", "{d}/m.pt"),
         lambda d: tiny_official(d / "m.pt"), says="cells."),
    # ----- run folders ------------------------------------------------------------------
    Case("search-existing-run-folder", TS, (*S, "--save", "{d}/run"), _existing_run, says="--resume"),
    Case("train-existing-run-folder", TR, (*T, "--save", "{d}/run"), _existing_run, says="--resume"),
    Case("search-save-under-a-file", TS, (*S, "--save", "{d}/a_file/run"), file("a_file", "x"), says="a_file"),
    Case("train-save-in-proc", TR, (*T, "--save", "/proc/fairdarts-run"), says="/proc/fairdarts-run"),
    Case("derive-out-under-a-file", DERIVE, ("{d}/run", "--out", "{d}/a_file/g.json"),
         lambda d: (search_run(tiny_official)(d), file("a_file", "x")(d)), says="a_file"),
    Case("search-save-in-a-folder-of-other-files", TS, (*S, "--save", "{d}/data"), _foreign_folder,
         says="not a run's"),
    Case("search-resume-a-dead-folder", TS, ("--resume", "{d}/run"), _dead_run, says="--save"),
    # ----- outputs that would replace an input ------------------------------------------
    Case("evaluate-dump-logits-onto-the-checkpoint", EV, ("--model_path", "{d}/m.pt", "--dump_logits", "{d}/m.pt"),
         lambda d: tiny_official(d / "m.pt"), says="--model_path"),
    Case("evaluate-export-onto-the-checkpoint", EV, ("--model_path", "{d}/m.pt", "--export", "onnx",
                                                     "--export_path", "{d}/m.pt"),
         lambda d: tiny_official(d / "m.pt"), says="--model_path"),
    Case("evaluate-export-beside-an-onnx-named-checkpoint", EV, ("--model_path", "{d}/m.onnx", "--export", "onnx"),
         lambda d: tiny_official(d / "m.onnx"), says="--model_path"),
    Case("evaluate-dump-logits-onto-a-hard-link", EV, ("--model_path", "{d}/m.pt", "--dump_logits", "{d}/link.pt"),
         _hard_link, says="--model_path"),
    Case("evaluate-dump-logits-onto-the-inputs", EV, ("--model_path", "{d}/m.pt", "--inputs", "{d}/in.pt",
                                                      "--dump_logits", "{d}/in.pt"),
         _inputs(torch.zeros(2, 1, 8, 8)), says="--inputs"),
    Case("evaluate-two-outputs-one-file", EV, ("--model_path", "{d}/m.pt", "--confusion", "{d}/o",
                                               "--dump_logits", "{d}/o"),
         lambda d: tiny_official(d / "m.pt"), says="both"),
    Case("visualize-out-onto-the-arch-file", "fairdarts.visualize", ("--arch", "{d}/g_normal.dot", "--out", "{d}",
                                                                     "--name", "g"),
         file("g_normal.dot", genotype_json()), says="--arch"),
    Case("derive-out-onto-the-gate-weights", DERIVE, ("{d}/run", "--out", "{d}/run/normal_weight.npy"),
         search_run(tiny_official), says="replace"),
    Case("derive-out-onto-the-run-genotype", DERIVE, ("{d}/run", "--out", "{d}/run/genotype.json"),
         search_run(tiny_official), says="run folder"),
    Case("evaluate-confusion-unwritable", EV, ("--model_path", "{d}/m.pt", "--arch", "FairDARTS_a",
                                               "--init_channels", "4", "--layers", "3",
                                               "--confusion", "{d}/a_file/cm.png"),
         lambda d: (tiny_official(d / "m.pt"), file("a_file", "x")(d)), says="a_file"),
    # ----- resumes that must not touch config.yaml ---------------------------------------
    Case("search-resume-corrupt-keeps-the-config", TS, ("--resume", "{d}/run"), _with_comment(search_run(truncated)),
         says="checkpoint"),
    Case("darts-resume-a-fairdarts-run", "darts/train_search.py", ("--resume", "{d}/run"), search_run(tiny_official),
         says="another command"),
    Case("search-resume-a-darts-run", TS, ("--resume", "{d}/run"), _darts_run, says="another command"),
    Case("train-resume-a-search-run", TR, ("--resume", "{d}/run"), search_run(tiny_official),
         says="another command"),
    # ----- realistic mistakes that were tracebacks -----------------------------------------
    Case("search-seed-too-large", TS, (*S, "--seed", str(2**32)), says="seed"),
    Case("train-seed-too-large", TR, (*T, "--seed", str(2**40)), says="seed"),
    Case("train-accum-steps-equal-to-the-batch", TR, (*T, "--accum_steps", "8"), says="accum_steps"),
    Case("train-corrupt-gzip-idx", TR, (*T, "--dataset", "fashion_mnist", "--data", "{d}/fm"), _corrupt_gzip,
         says="corrupt"),
    Case("search-config-alias-bomb", TS, (*S, "--config", "{d}/c.yaml"), file("c.yaml", ALIAS_BOMB), says="alias"),
    Case("search-config-dev-zero", TS, (*S, "--config", "/dev/zero"), says="/dev/zero"),
    Case("train-arch-dev-zero", TR, (*T, "--arch", "/dev/zero"), says="/dev/zero"),
    Case("evaluate-inputs-wrong-channels", EV, ("--model_path", "{d}/m.pt", "--arch", "FairDARTS_a",
                                                "--init_channels", "4", "--layers", "3", "--inputs", "{d}/in.pt"),
         _inputs(torch.zeros(2, 3, 8, 8)), says="input"),
    Case("evaluate-inputs-bad-targets", EV, ("--model_path", "{d}/m.pt", "--arch", "FairDARTS_a",
                                             "--init_channels", "4", "--layers", "3", "--inputs", "{d}/in.pt"),
         _inputs(torch.zeros(2, 1, 8, 8), target=torch.tensor([0, 10])), says="target"),
    Case("evaluate-inputs-too-small", EV, ("--model_path", "{d}/m.pt", "--arch", "FairDARTS_a",
                                           "--init_channels", "4", "--layers", "3", "--inputs", "{d}/in.pt"),
         _inputs(torch.zeros(2, 1, 1, 1)), says="input"),
    Case("evaluate-nan-weights", EV, ("--model_path", "{d}/m.pt", "--arch", "FairDARTS_a", "--init_channels", "4",
                                      "--layers", "3", "--inputs", "{d}/m.pt"), _nan_official, says="NaN"),
    Case("evaluate-dev-zero", EV, ("--model_path", "/dev/zero"), says="/dev/zero"),
    Case("derive-nan-gates", DERIVE, ("{d}/run",), _nan_gates, says="NaN"),
    Case("train-parse-nan-gates", TR, (*T, "--arch", "{d}/run", "--parse_method", "darts"), _nan_gates, says="NaN"),
]


def _argv(case: Case, d: Path) -> list[str]:
    return [a.replace("{d}", str(d)) for a in case.argv]


def _prepare(case: Case, d: Path) -> dict[str, str]:
    d.mkdir()
    if case.setup is not None:
        case.setup(d)
    return tree_hashes(d)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line(launcher: Launcher, tmp_path: Path, case: Case) -> None:
    d = tmp_path / "case"
    before = _prepare(case, d)
    result = launcher.run(case.entry, _argv(case, d), cwd=tmp_path)
    line = assert_one_line_error(result)
    assert case.says.lower() in line.lower(), f"the message does not mention {case.says!r}: {line}"
    after = tree_hashes(d)
    assert {k: after.get(k) for k in before} == before, "a file that was there before changed"
    assert not (d / "out").exists(), "a run folder was made before the inputs were validated"
    assert not (d / "run" / PWNED).exists() and not (d / PWNED).exists(), "the pickled payload ran"
    COUNTS["bad inputs refused"] += 1


FRESH = ("search-unknown-flag", "search-resume-malicious", "train-genotype-json-bad-op")


@pytest.mark.parametrize("case_id", FRESH)
def test_fresh_interpreter_agrees(launcher: Launcher, tmp_path: Path, case_id: str) -> None:
    """The fork server behaves as `python script.py`: same exit code and message."""
    case = next(c for c in CASES if c.id == case_id)
    results = []
    for how in ("fresh", "forked"):
        d = tmp_path / how
        _prepare(case, d)
        result = (run_fresh(case.entry, _argv(case, d), tmp_path) if how == "fresh"
                  else launcher.run(case.entry, _argv(case, d), cwd=tmp_path))
        results.append((result.rc, assert_one_line_error(result).replace(str(d), "D")))
    assert results[0] == results[1]
