"""MetricsFile writes one line per step with the tokens, loss, LR and throughput, and draws the curves at the end."""

import json
import math

import pytest
from callback_harness import fit, train_config

from bertforge.checkpoint.run_folder import RunFolder
from bertforge.train.callbacks.metrics_file import MetricsFile, eta_seconds


def test_a_line_per_step_and_the_curves(tmp_path, sample_data):
    config = train_config(tmp_path, sample_data)
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    fit(config, [MetricsFile(folder, config.model, config.data.mask_rate, None, 1, config.total_tokens)],
        max_duration="3ba")
    rows = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    assert [row["batch"] for row in rows] == [1, 2, 3]
    assert 0 < rows[0]["tokens"] < rows[1]["tokens"] < rows[2]["tokens"]
    assert all(row["global_batch_rows"] == config.global_batch_size for row in rows)
    for row in rows:
        assert math.isfinite(row["loss"]) and row["loss"] > 0 and math.isfinite(row["grad_norm"])
        assert row["tokens_per_s"] > 0 and "lr" in row
    assert folder.curves.is_file() and folder.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_eta_of_a_resumed_run_counts_only_the_tokens_trained_since_the_restart():
    # Resumed at 7M of 36M tokens, 60 s later at 7.36M: 6,000 tok/s, so 29M - 0.36M tokens in 4,773 s (80 min),
    # not the 31 s that all 7.36M tokens over 60 s would give.
    assert eta_seconds(7_360_000, 7_000_000, 60.0, 36_000_000) == pytest.approx(28_640_000 / 6_000)
    assert eta_seconds(360_000, 0, 60.0, 36_000_000) == pytest.approx(35_640_000 / 6_000)
