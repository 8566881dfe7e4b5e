"""bench/train_overhead.py, the CPU proxy of the trainer's overhead, on the test corpus: it compares like with like
(the bare loop's first step has the trainer's loss: the same weights and batch) and reports the ratio. The ratio
itself is measured by running the script, not asserted here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_overhead_bench_compares_the_trainer_with_a_bare_loop_on_the_same_steps(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "overhead")
    out = tmp_path / "overhead.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench/train_overhead.py"), "--config", str(config),
                             "--tokens", str(10 * 1024), "--skip", "3", "--json", str(out)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["steps"] >= 10 and summary["compiled"] is False  # the CPU default
    assert summary["first_losses"]["bare"] == pytest.approx(summary["first_losses"]["trainer"], abs=1e-5)
    assert summary["trainer_tokens_per_s"] > 0 and summary["bare_tokens_per_s"] > 0
    assert set(summary["versions"]) == {"python", "torch", "mosaicml", "mosaicml-streaming"}
    assert "bertforge train" in result.stdout and "bare loop" in result.stdout
