"""The one short training run the export tests read: 12 steps, checkpoints at batches 4, 8 and 12, and the
HuggingFace directory it exports at its end (rows of 256 tokens)."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_config

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, sample_data) -> Path:
    """The folder holding the run's checkpoints (``run/``) and its export (``hf/``)."""
    tmp = tmp_path_factory.mktemp("short-run")
    config = run_config(tmp, sample_data, "run", export_dir=str(tmp / "hf"))
    result = subprocess.run([BERTFORGE, "train", str(config)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp
