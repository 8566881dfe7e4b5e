"""CI must prove the README: .ci/run runs the README's test command and then its main command, character for
character, then checks what the main command made."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> tuple[str, str]:
    """The README's main command and test command: the code lines under 'The two commands'."""
    section = (ROOT / "README.md").read_text().split("## The two commands", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in section.splitlines() if line.startswith("python3.11 -m venv")]
    assert len(commands) == 2, commands
    return commands[0], commands[1]


def test_ci_runs_the_readme_commands_then_checks_the_main_job():
    """After the system packages, .ci/run is: the test command, the main command, the quickstart check."""
    main, tests = _readme_commands()
    assert main.endswith(".venv/bin/bertforge quickstart") and "pytest" in tests
    ci_lines = [line for line in (ROOT / ".ci/run").read_text().splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    *setup, test_command, main_command, check = ci_lines
    assert (test_command, main_command) == (tests, main)
    assert check == ".venv/bin/python .ci/check_quickstart.py" and (ROOT / ".ci/check_quickstart.py").is_file()
    assert all(line.startswith(("apt-get ", "export DEBIAN_FRONTEND=")) for line in setup), setup


def test_the_suite_also_collects_in_one_process():
    """The README's `-n 0` (no test workers) keeps the grouping hooks working: they read an option only xdist's
    workers have, and once crashed the whole run without it."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "--collect-only", "-q",
                             "tests/train/test_run_faults.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test_autoresume_takes_the_newest_checkpoint_that_verifies" in result.stdout
