"""Every command's ``--help``: every flag explained, in its section, its default said once,
required flags marked required, no docstring markup, one metavar per flag name, rules offered
per search space; and ``--threads`` sets the threads a run computes with."""
from __future__ import annotations

import argparse
import dataclasses
import re
import runpy
from pathlib import Path

import pytest
import torch
import yaml

from fairdarts.ablations.config import DartsSearchConfig
from fairdarts.config import build_parser
from fairdarts.evaluation.cli import main as evaluate_main
from fairdarts.evaluation.cli import EvalConfig
from fairdarts.help_groups import GROUPS, group_of
from fairdarts.search import cli as search_cli
from fairdarts.search import derive_cli
from fairdarts import doctor, summary, visualize
from fairdarts.search.config import SearchConfig
from fairdarts.threads import available_cores
from fairdarts.train import cli as train_cli
from fairdarts.train.config import TrainConfig

collapse_study = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "collapse_study.py"))

CONFIG_CLIS = {"train_search.py": SearchConfig, "darts/train_search.py": DartsSearchConfig,
               "train.py": TrainConfig, "evaluate.py": EvalConfig}
PARSERS = {**{prog: (lambda c=cls, p=prog: build_parser(c, p, "test")) for prog, cls in CONFIG_CLIS.items()},
           "summary": summary.build_parser, "derive": derive_cli.build_parser, "visualize": visualize.build_parser,
           "doctor": doctor.build_parser,
           **{f"collapse_study {name}": (lambda n=name: _subparser(collapse_study["build_parser"](), n))
              for name in ("run", "report", "retrain")}}


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def section_of(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return next(g.title for g in parser._action_groups if action in g._group_actions)


@pytest.mark.parametrize("prog", PARSERS)
def test_every_flag_is_explained_with_its_default_said_once(prog):
    parser = PARSERS[prog]()
    for action in flags(parser):
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and len(action.help) > 10, f"{prog} {name} has no help text"
        assert len(re.findall(r"\bdefault\b", action.help)) <= 1, f"{prog} {name}: {action.help}"
        if action.required:
            assert "default" not in action.help, f"{prog} {name} is required but shows a default"


@pytest.mark.parametrize("prog", [p for p in PARSERS if not p.startswith("collapse_study") and p != "doctor"])
def test_flags_sit_in_their_sections_in_order(prog):
    parser = PARSERS[prog]()
    fields = {f.name: f for f in dataclasses.fields(CONFIG_CLIS[prog])} if prog in CONFIG_CLIS else {}
    for action in flags(parser):
        if action.option_strings and action.dest != "config":
            override = fields[action.dest].metadata.get("group") if fields else None
            assert section_of(parser, action) == group_of(action.dest, override), action.dest
    text = parser.format_help()
    positions = [text.index(f"\n{t}:\n") for t in GROUPS if f"\n{t}:\n" in text]
    assert len(positions) >= 2 and positions == sorted(positions)


def test_the_big_commands_use_every_main_section():
    for prog in ("train_search.py", "train.py"):
        text = PARSERS[prog]().format_help()
        for title in ("data", "network", "optimisation", "architecture", "run folder", "devices/speed", "logging"):
            assert f"\n{title}:\n" in text, (prog, title)


def test_required_flag_is_shown_required(capsys):
    parser = PARSERS["evaluate.py"]()
    model_path = next(a for a in flags(parser) if a.dest == "model_path")
    assert model_path.required and model_path.help.endswith("(required)")
    assert "[--model_path" not in parser.format_usage() and "--model_path FILE" in parser.format_usage()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == "error: the following arguments are required: --model_path (see --help)"


@pytest.mark.parametrize("prog", PARSERS)
def test_help_has_no_docstring_markup(prog):
    text = PARSERS[prog]().format_help()
    assert not re.search(r"``|:(class|func|mod|data|meth):`", text), prog


def test_one_metavar_per_flag_name_from_the_shared_set():
    """A flag is spelled the same in every installed command (``--data DIR`` everywhere); ``--out``
    is a file for derive and a folder for visualize, as it says."""
    seen: dict[str, set[str]] = {}
    for prog, make in PARSERS.items():
        if prog.startswith("collapse_study"):  # a research script of the repository, not a command
            continue
        for action in flags(make()):
            if action.option_strings and action.nargs != 0 and not action.choices:
                seen.setdefault(action.option_strings[-1], set()).add(str(action.metavar))
    allowed = {"INT", "FLOAT", "STR", "DIR", "FILE", "RUN_DIR", "ARCH", "METHOD"}
    assert all(metavars <= allowed for metavars in seen.values()), seen
    assert {flag for flag, metavars in seen.items() if len(metavars) > 1} == {"--out"}


@pytest.mark.parametrize("prog", ["train_search.py", "train.py", "derive"])
def test_parse_method_offers_each_space_its_own_rules(prog):
    action = next(a for a in flags(PARSERS[prog]()) if a.dest == "parse_method")
    assert action.metavar == "METHOD" and action.choices is None
    help_text = " ".join(action.help.split())
    assert "cell: darts, threshold_sparse, threshold_edge; mobile: argmax, threshold" in help_text \
        or "cell run: darts, threshold_sparse, threshold_edge; mobile run: argmax, threshold" in help_text


def test_darts_search_offers_only_cell_rules():
    action = next(a for a in flags(PARSERS["darts/train_search.py"]()) if a.dest == "parse_method")
    assert set(action.choices) == {"darts", "threshold_sparse", "threshold_edge"}


def test_a_flag_without_a_section_lands_in_other():
    assert group_of("a_flag_nobody_listed") == "other"
    assert group_of("batch_size", "devices/speed") == "devices/speed"


def test_default_threads_follow_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert available_cores() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert available_cores() == 1  # never 0, however many ranks share the node


TINY_SEARCH = ["--dataset", "synthetic", "--image_size", "8", "--subset", "16", "--batch_size", "8",
               "--init_channels", "4", "--layers", "3", "--device", "cpu", "--epochs", "1", "--no-progress"]
TINY_TRAIN = ["--dataset", "synthetic", "--image_size", "8", "--subset", "16", "--batch_size", "8",
              "--init_channels", "4", "--layers", "3", "--device", "cpu", "--epochs", "1", "--no-progress",
              "--max_steps_per_epoch", "1"]


@pytest.mark.parametrize("command", ["search", "train"])
def test_threads_flag_sets_the_threads_the_run_computes_with(command, tmp_path, monkeypatch, capsys):
    seen: list[int] = []
    module, cls_name, args = ((search_cli, "Searcher", TINY_SEARCH) if command == "search"
                              else (train_cli, "Trainer", TINY_TRAIN))
    base = getattr(module, cls_name)

    class Probe(base):  # type: ignore[misc, valid-type]
        def run(self):
            seen.append(torch.get_num_threads())
            return super().run()

    monkeypatch.setattr(module, cls_name, Probe)
    extra = {"searcher_cls": Probe} if command == "search" else {}  # main's default argument is bound early
    before = torch.get_num_threads()
    want = 3 if before != 3 else 2
    try:
        assert module.main([*args, "--threads", str(want), "--save", str(tmp_path / "run")], **extra) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [want]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["threads"] == want
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"intra-op CPU threads: {want} (--threads)" in log
    assert "warning: random crops pad 4 px on each side of 8 px images" in log  # fitted to the image size
    if command == "train":  # cutout is on by default in the retraining only
        assert "cutout 4 px: half the 8 px images (--cutout_length sets it)" in log
    if command == "train":  # evaluate.py and the summary on the checkpoint just written
        capsys.readouterr()
        try:
            assert evaluate_main(["--model_path", str(tmp_path / "run" / "model_best.pt"), "--data", "unused",
                                  "--dataset", "synthetic", "--subset", "8", "--threads", str(want)]) == 0
            assert f"{want} CPU threads)" in capsys.readouterr().out
            assert summary.main(["--arch", "FairDARTS_a", "--init_channels", "4", "--layers", "3",
                                 "--threads", str(want)]) == 0
            assert torch.get_num_threads() == want
        finally:
            torch.set_num_threads(before)
