"""Every `bertforge ...` command line in the README and docs/ parses: the commands a user copies from the docs are
the parser's (nothing is run). A documented line that drifted from the parser (`export RUN --all OUT` refused
once OUT became optional) fails here."""

import contextlib
import io
import re
import shlex

import pytest
from helpers import ROOT

from bertforge.cli import build_parser

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SHELL = {"", "bash", "sh", "shell", "console"}


def documented_commands() -> list[tuple[str, str]]:
    """(where, command line) for every line of a shell code block that runs bertforge, its continuations joined,
    comments dropped, and each command of a `&&` / `;` / `|` chain on its own."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) not in SHELL:
                continue
            block = match.group(2).replace("\\\n", " ")
            first_line = text[:match.start()].count("\n") + 2
            for offset, line in enumerate(block.splitlines()):
                for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                    command = part.strip().removeprefix("$ ")
                    if command.split()[:1] == ["bertforge"]:
                        found.append((f"{path.relative_to(ROOT)}:{first_line + offset}", command))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_kind():
    kinds = {shlex.split(line)[1] for _, line in COMMANDS}
    assert {"prep", "train", "export", "finetune", "plan", "slurm", "report", "quickstart"} <= kinds, kinds


@pytest.mark.parametrize(("where", "line"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_line_parses(where, line):
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(shlex.split(line)[1:])
    except SystemExit as exit_:
        assert exit_.code == 0, f"{where}: `{line}` does not parse: {errors.getvalue().strip().splitlines()[-1]}"
