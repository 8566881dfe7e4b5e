"""DivergenceGuard skips a step whose gradients are not finite (the weights stay as they were), records it, and
stops a run whose steps keep failing."""

import json

import torch
from callback_harness import Recorder, fit, train_config

from bertforge.checkpoint.run_folder import RunFolder
from bertforge.train.callbacks.divergence_guard import DivergenceGuard


def _nan_grads_at(batches: set[int]):
    def poison(event, state):
        if int(state.timestamp.batch) + 1 in batches:  # the step being taken
            next(p for p in state.model.parameters() if p.grad is not None).grad.fill_(float("nan"))
    return Recorder(poison, "after_train_batch")


def _weights(state):
    return [p.detach().clone() for p in state.model.parameters()]


def test_a_step_with_non_finite_gradients_is_skipped_and_recorded(tmp_path, sample_data):
    config = train_config(tmp_path, sample_data, "stability.on_nonfinite=skip")
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    guard = DivergenceGuard(config.stability, folder)
    weights = {}
    record = Recorder(lambda event, state: weights.__setitem__((event, int(state.timestamp.batch)), _weights(state)),
                      "batch_start", "batch_end")
    trainer = fit(config, [_nan_grads_at({2}), guard, record], max_duration="3ba")
    assert int(trainer.state.timestamp.batch) == 3 and guard.skipped == 1
    untouched = zip(weights[("batch_start", 1)], weights[("batch_end", 2)], strict=True)
    assert all(torch.equal(a, b) for a, b in untouched)  # step 2 changed nothing
    moved = zip(weights[("batch_start", 2)], weights[("batch_end", 3)], strict=True)
    assert not all(torch.equal(a, b) for a, b in moved)  # step 3 trained
    events = [json.loads(line) for line in folder.metrics.read_text().splitlines()]
    assert [(e["event"], e["batch"], e["nonfinite"]) for e in events] == [("skip", 2, True)]


def test_steps_that_keep_failing_stop_the_run_with_the_reason(tmp_path, sample_data):
    config = train_config(tmp_path, sample_data, "stability.on_nonfinite=skip", "stability.max_skips_in_a_row=2")
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    guard = DivergenceGuard(config.stability, folder)
    trainer = fit(config, [_nan_grads_at({1, 2, 3, 4, 5}), guard], max_duration="8ba")
    assert int(trainer.state.timestamp.batch) == 3
    assert "2 steps in a row were already skipped" in guard.stop_reason
