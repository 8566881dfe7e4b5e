"""TokenScheduler sets each step's LR from the tokens seen before the step."""

from callback_harness import Recorder, fit, train_config

from bertforge.train.callbacks.token_lr import TokenScheduler
from bertforge.train.schedules import lr_at


def test_each_step_gets_the_schedule_at_the_tokens_before_it(tmp_path, sample_data):
    config = train_config(tmp_path, sample_data, "schedule.warmup_tokens=2048")
    seen = []
    scheduler = TokenScheduler(config.schedule, config.total_tokens, config.optimizer.lr, lr_scale=lambda: 0.5)
    record = Recorder(lambda event, state: seen.append((int(state.timestamp.token),
                                                        state.optimizers[0].param_groups[0]["lr"])), "batch_start")
    fit(config, [scheduler, record], max_duration="4ba")
    assert [tokens for tokens, _ in seen][0] == 0 and len(seen) == 4
    assert seen[0][1] == 0.0  # warmup starts at zero, at the first step, not one step late
    for tokens, lr in seen:
        assert lr == lr_at(config.schedule, config.optimizer.lr, tokens, config.total_tokens) * 0.5
    assert 0 < seen[1][1] < seen[2][1]  # still warming up: 2048 tokens is more than the first steps hold
