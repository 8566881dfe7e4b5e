"""Every command a user types is run by some test as the user runs it, and the CLI only parses and dispatches.

Each subcommand (and each action of `model`, `eval`, `tokenizer`) has a test marked ``@pytest.mark.command("...")``
that runs the installed ``bertforge`` entry point in a subprocess and checks what it wrote or said. The walk below
reads the parser, so a command added without such a test fails here.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from bertforge.cli import build_parser

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[str]:
    """Every runnable command of the parser tree, as the words a user types ("eval mlm")."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= leaf_commands(sub, (*prefix, name))
    return found or {" ".join(prefix)}


def marked_commands() -> dict[str, list[str]]:
    """command -> the tests marked ``@pytest.mark.command(command)``, read from the test files' syntax."""
    marked: dict[str, list[str]] = {}
    for path in sorted(ROOT.glob("tests/**/test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    if (isinstance(decorator, ast.Call) and ast.unparse(decorator.func) == "pytest.mark.command"):
                        marked.setdefault(decorator.args[0].value, []).append(f"{path.name}::{node.name}")
    return marked


def test_every_command_has_a_test_that_runs_it_as_a_user_does():
    commands = leaf_commands(build_parser())
    assert {"model info", "model init", "eval mlm", "tokenizer train", "train", "quickstart"} <= commands
    marked = marked_commands()
    missing = sorted(commands - set(marked))
    assert not missing, f"no @pytest.mark.command test runs: {missing}"
    assert not set(marked) - commands, f"marked commands the CLI does not have: {sorted(set(marked) - commands)}"


def leaf_parsers(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(words, parser) of every runnable command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, (*prefix, name))


def test_flags_and_positionals_mix_in_any_order_in_every_command():
    """A flag before, between or after the positionals parses the same (`export RUN --all OUT` was 'unrecognized
    arguments' while OUT was an optional positional)."""
    parser = build_parser()
    checked = 0
    for words, leaf in leaf_parsers(parser):
        positionals = []
        for action in leaf._positionals._group_actions:
            positionals += ["a=1"] if action.nargs == "*" else ["p1", "p2"] if action.nargs == "+" else ["p"]
        flags = [a for a in leaf._optionals._group_actions if a.option_strings and a.help != argparse.SUPPRESS
                 and a.dest != "help" and not a.required]
        required = [token for a in leaf._optionals._group_actions if a.required for token in (a.option_strings[0], "7")]
        for flag in flags:
            tokens = [flag.option_strings[0]] if flag.nargs == 0 else [flag.option_strings[0], "7"]
            parsed = []
            for at in range(len(positionals) + 1):
                argv = [*words, *required, *positionals[:at], *tokens, *positionals[at:]]
                args, extra = parser.parse_known_args(argv)
                assert extra == [], f"{' '.join(argv)}: {extra}"
                parsed.append({k: v for k, v in vars(args).items() if k != "func"})
            assert all(p == parsed[0] for p in parsed), f"{' '.join(words)} {flag.option_strings[0]}: {parsed}"
            checked += 1
    assert checked > 30
    args, _ = parser.parse_known_args(["export", "runs/x", "--all", "out"])
    assert (args.checkpoint, args.out, args.all) == ("runs/x", "out", True)


def test_cli_handlers_only_dispatch():
    """No handler builds an argparse.Namespace or calls another handler (the quickstart did both, and crashed
    when `prep` gained an option its hand-made Namespace lacked)."""
    tree = ast.parse((ROOT / "src/bertforge/cli.py").read_text())
    handlers = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name.startswith("_")
                and not f.name.startswith("_add_")}
    assert "_quickstart" in handlers and "_prep" in handlers
    for name, function in handlers.items():
        for node in ast.walk(function):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                assert "Namespace" not in called, f"{name} builds a Namespace"
                assert called not in handlers, f"{name} calls the handler {called}"


@pytest.mark.slow
@pytest.mark.command("quickstart")
def test_quickstart_runs_end_to_end_then_skips_what_is_done(tmp_path):
    """`bertforge quickstart --small` in a fresh folder: tokenizer, shards, a run, its export and the summary; run
    again, it keeps the tokenizer and the shards, trains nothing and exits 0. (CI runs the full-length quickstart
    after the tests, as the README's main command.)"""
    from transformers import AutoModelForMaskedLM

    env = os.environ | {"WANDB_MODE": "offline"}
    first = subprocess.run([BERTFORGE, "quickstart", "--small"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=900, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert "1/3 tokenizer: training" in out and "== quickstart done" in out
    for stream in ("code", "web", "science"):
        assert f"\n  {stream}: ..." in out and "[MASK]" in out.split(f"\n  {stream}: ...")[1].splitlines()[0]
    assert "bertforge eval mlm runs/quickstart-small/hf --data" in out
    evals = [row for row in map(json.loads, (tmp_path / "runs/quickstart-small/metrics.jsonl").read_text().splitlines())
             if row.get("event") == "eval"]
    assert len(evals) >= 2 and evals[-1]["loss"] < evals[0]["loss"] - 0.3
    assert f"loss {evals[0]['loss']:.2f}" in out and f"loss {evals[-1]['loss']:.2f}" in out
    model = AutoModelForMaskedLM.from_pretrained(tmp_path / "runs/quickstart-small/hf")
    assert model.config.vocab_size == 8192

    # The tokenizer and every shard and unit record stay as they were (each source's index.json and stats.json
    # are merged again from the units, to the same content).
    made = {p: p.stat().st_mtime_ns for p in (tmp_path / "data/sample-small").rglob("*")
            if p.is_file() and (".mds" in p.name or p.name == "unit.json" or p.parent.name == "tokenizer")}
    assert any(p.name == "tokenizer.json" for p in made) and any(".mds" in p.name for p in made)
    indexes = {p: p.read_bytes() for p in (tmp_path / "data/sample-small").rglob("index.json")}
    again = subprocess.run([BERTFORGE, "quickstart", "--small"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=900, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "exists, kept" in again.stdout and "already finished" in again.stdout
    assert "Traceback" not in again.stderr
    changed = [str(p) for p, mtime in made.items() if p.stat().st_mtime_ns != mtime]
    assert not changed, f"a rerun rewrote {changed}"
    assert {p: p.read_bytes() for p in indexes} == indexes
