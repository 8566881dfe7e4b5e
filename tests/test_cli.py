"""The installed ``bertforge`` console script, run as a user would."""

import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForMaskedLM

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def run(*args):
    return subprocess.run([BERTFORGE, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands():
    result = run("--help")
    assert result.returncode == 0
    assert "model" in result.stdout


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


def test_model_init_writes_a_directory_transformers_loads(tmp_path):
    result = run("model", "init", "tiny", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    model, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "m", output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert model.config.num_hidden_layers == 4
