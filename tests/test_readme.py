"""CI must prove the README: .ci/run runs the README's test command, character for character."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    """The last command of .ci/run is a line of the README; before it come only system package installs."""
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    *setup, test_command = ci_lines
    assert test_command in (ROOT / "README.md").read_text().splitlines()
    assert all(line.startswith(("apt-get ", "export DEBIAN_FRONTEND=")) for line in setup), setup
