"""CI must prove the README: .ci/run runs the README's test command, character for character."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert len(ci_lines) == 1, ci_lines
    assert ci_lines[0] in (ROOT / "README.md").read_text().splitlines()
