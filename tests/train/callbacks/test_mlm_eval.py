"""MLMEval evaluates the held-out data at the start, at each interval and at the end, the same batches each time."""

import json
import math

from callback_harness import fit, train_config

from bertforge.checkpoint.run_folder import RunFolder
from bertforge.train.callbacks.mlm_eval import MLMEval


def test_evaluates_at_start_interval_and_end_on_fixed_batches(tmp_path, sample_data):
    held_out = sample_data["mds"] / "web"
    config = train_config(tmp_path, sample_data, "eval.interval=2ba", f"eval.streams.web={held_out}",
                          "eval.max_tokens=2000")
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    fit(config, [MLMEval(config, folder)], max_duration="3ba")
    evals = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    assert [row["batch"] for row in evals] == [0, 2, 3] and all(row["event"] == "eval" for row in evals)
    assert all(math.isfinite(row["loss"]) and 0 <= row["accuracy"] <= 1 for row in evals)
    assert len({row["predictions"] for row in evals}) == 1  # the same masked batches every time
    assert set(evals[0]["streams"]) == {"web"}

    again = RunFolder(tmp_path / "again")
    again.path.mkdir()
    fit(config, [MLMEval(config, again)], max_duration="1ba")
    first = json.loads(again.metrics.read_text().splitlines()[0])
    assert first["loss"] == evals[0]["loss"]  # same seed, same weights at batch 0: the same number
