"""The code's shape, checked: ruff (style, imports at the top of a module), and which package may import which."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

SRC = ROOT / "src" / "bertforge"

# What each package must not import: a package imports downward only (model and data at the bottom, checkpoint on
# them, the loop, eval, fine-tuning and export above, the report card on top).
FORBIDDEN = {
    "model": ("data", "checkpoint", "train", "eval", "finetune", "export", "report", "cli", "quickstart", "slurm"),
    "data": ("model", "checkpoint", "train", "eval", "finetune", "export", "report", "cli", "quickstart", "slurm"),
    "checkpoint": ("train", "eval", "finetune", "export", "report", "cli", "quickstart", "slurm"),
    "export": ("train", "eval", "finetune", "report", "cli", "quickstart", "slurm"),
    "eval": ("finetune", "report", "cli", "quickstart", "slurm"),
    "finetune": ("report", "cli", "quickstart", "slurm"),
    "report": ("cli", "quickstart", "slurm"),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("bertforge")}


def test_ruff_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_downward_only(package):
    wrong = [f"{path.relative_to(SRC)} imports {name}" for path in sorted((SRC / package).rglob("*.py"))
             for name in sorted(_imports(path)) if (name.split(".") + [""])[1] in FORBIDDEN[package]]
    assert wrong == []


def test_the_hf_format_module_imports_no_model_class():
    """hf_io converts configs and state dicts; the model classes build themselves from it (no import circle)."""
    assert _imports(SRC / "model" / "hf_io.py") <= {"bertforge.atomic", "bertforge.errors", "bertforge.model.config"}


def test_reading_checkpoints_needs_no_composer():
    modules = [f"bertforge.checkpoint.{p.stem}" for p in sorted((SRC / "checkpoint").glob("*.py"))
               if p.stem != "__init__"]
    script = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
              f"print(sorted(m for m in sys.modules if m.split('.')[0] == 'composer'))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]" and len(modules) >= 5
