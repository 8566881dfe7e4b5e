"""The installed ``bertforge`` console script, run as a user would."""

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForMaskedLM

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def run(*args):
    return subprocess.run([BERTFORGE, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("model", "prep", "tokenizer"):
        assert command in result.stdout


@pytest.mark.command("model info")
def test_model_info_reports_the_parameter_count():
    result = run("model", "info", "base")
    assert result.returncode == 0, result.stderr
    assert "149.7M" in result.stdout


def test_bad_config_is_an_error_message_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_heads: 12\n")
    result = run("model", "info", str(bad))
    assert result.returncode == 2
    assert "unknown key 'num_heads'" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.command("model init")
def test_model_init_writes_a_directory_transformers_loads(tmp_path):
    result = run("model", "init", "tiny", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    model, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert model.config.num_hidden_layers == 4


def test_prep_with_a_missing_input_is_a_clear_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("tokenizer: t\nout_dir: o\nsources:\n  - name: web\n    inputs:\n"
                      "      - {format: jsonl, path: /nowhere/x.jsonl}\n")
    result = run("prep", str(recipe))
    assert result.returncode == 2
    assert "/nowhere/x.jsonl" in result.stderr and "does not exist" in result.stderr
    assert not (tmp_path / "o").exists()
