"""The command line explains itself: every config key in ``train --help`` and ``config --help`` (read off the
dataclasses, so it cannot drift), help text for every option, no internal command at top level, and a
usage error in one line with exit 2."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing

import pytest

from synthkit.cli import build_parser, main
from synthkit.cli_help import type_text, value_text
from synthkit.config import GeneratorConfig, ObjectiveConfig, PipelineConfig
from synthkit.registry import OBJECTIVES, PRODUCERS


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _every_key() -> list[tuple[str, str | None, str, str, str]]:
    """(section, kind or None, key, type, default) of every key the config accepts, every kind included."""
    hints = typing.get_type_hints(PipelineConfig)
    out = []
    for section in dataclasses.fields(PipelineConfig):
        cls = hints[section.name]
        if cls in (GeneratorConfig, ObjectiveConfig):
            registry = PRODUCERS if cls is GeneratorConfig else OBJECTIVES
            classes = [(name, registry.get(name).config_class()) for name in registry.names()]
        else:
            classes = [(None, cls)]
        for kind, sub in classes:
            sub_hints = typing.get_type_hints(sub)
            for f in dataclasses.fields(sub):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                out.append((section.name, kind, f.name, type_text(sub_hints[f.name]), value_text(default)))
    return out


def _blocks(text: str) -> dict[tuple[str, str | None], list[str]]:
    """The help's config reference split into (section, kind) -> its key lines."""
    blocks: dict[tuple[str, str | None], list[str]] = {}
    section, kind = None, None
    for line in text.splitlines():
        if m := re.match(r"^([a-z_]+):  ", line):
            section, kind = m.group(1), None
            blocks[(section, None)] = []
        elif m := re.match(r"^  (?:kind|name)=([^:]+): ", line):
            kind = m.group(1)
            blocks[(section, kind)] = []
        elif section is not None and line.startswith("  ") and line.strip():
            blocks[(section, kind)].append(line.strip())
    return blocks


@pytest.mark.parametrize("command", ["train", "config"])
def test_every_config_key_is_in_the_help_with_its_type_and_default(command: str, capsys) -> None:
    text = _help(capsys, command)
    assert "--section.key=value" in text
    blocks = _blocks(text)
    keys = _every_key()
    assert len(keys) > 100  # the issue counted over 100
    for section, kind, key, tp, default in keys:
        lines = blocks.get((section, kind))
        assert lines is not None, (section, kind)
        pattern = re.compile(rf"^{re.escape(key)}\s+{re.escape(tp)}\s+{re.escape(default)}$")
        assert any(pattern.match(line) for line in lines), (section, kind, key, tp, default)
    # every kind of the tagged sections is there
    assert {k for s, k in blocks if s == "generator"} >= {"cgan", "diffusion", "naive"}
    assert {k for s, k in blocks if s == "objective"} >= {"simclr", "moco"}


def _parsers(parser: argparse.ArgumentParser, prog: str = "synthkit"):
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{prog} {name}")


def test_every_option_has_help_text() -> None:
    from synthkit.cli import _train_extractor_parser

    missing = []
    for prog, parser in [*_parsers(build_parser()), ("audit train-extractor", _train_extractor_parser())]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            if not action.help:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_no_progress_and_eval_run_have_help(capsys) -> None:
    assert "no progress bars" in _help(capsys, "train")
    assert re.search(r"--run RUN\s+a finished run directory", _help(capsys, "eval"))


def test_the_internal_command_is_not_listed(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "audit-train-extractor" not in text
    assert "==SUPPRESS==" not in text
    # and `audit train-extractor` still works as documented
    assert "--epochs" in _help(capsys, "audit", "train-extractor")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "required: COMMAND"),
        (["nope"], "invalid choice: 'nope'"),
        (["generate", "--out", "x"], "the following arguments are required: --run"),
        (["eval", "--run", "r", "--knn-k", "x"], "invalid int value"),
        (["shards"], "required: SUBCOMMAND"),
        (["shards", "convert", "--data", "nope"], "invalid choice"),
        (["audit", "train-extractor", "--out", "x"], "required: --data"),
        (["generate", "--run", "r", "--out", "o", "--kind", "both"], "invalid choice: 'both'"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(argv: list[str], expected: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("synthkit") and expected in err[0], err
    assert "--help" in err[0]  # where to read the rest
