"""Each LR schedule against its formula at key points, in tokens, out to 2 trillion."""

import math

import pytest

from bertforge.train.config import ScheduleConfig
from bertforge.train.schedules import lr_multiplier

T = 2_000_000_000_000


@pytest.mark.parametrize("shape, at_half", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_warmup_stable_decay(shape, at_half):
    config = ScheduleConfig(name="wsd", warmup_tokens=3_000_000_000, decay_tokens=50_000_000_000, decay_shape=shape)
    assert lr_multiplier(config, 0, T) == 0.0
    assert lr_multiplier(config, 1_500_000_000, T) == 0.5
    assert lr_multiplier(config, 3_000_000_000, T) == 1.0
    assert lr_multiplier(config, T - 50_000_000_000, T) == 1.0
    assert lr_multiplier(config, T - 25_000_000_000, T) == pytest.approx(at_half)
    assert lr_multiplier(config, T, T) == pytest.approx(0.0, abs=1e-12)


def test_decay_floor():
    config = ScheduleConfig(name="wsd", decay_tokens=100, decay_shape="1-sqrt", min_lr_ratio=0.001)
    assert lr_multiplier(config, 1000, 1000) == pytest.approx(0.001)


def test_constant_with_warmup_and_cosine():
    constant = ScheduleConfig(name="constant", warmup_tokens=10)
    assert [lr_multiplier(constant, t, 100) for t in (0, 5, 10, 99)] == [0.0, 0.5, 1.0, 1.0]
    cosine = ScheduleConfig(name="cosine", warmup_tokens=10, min_lr_ratio=0.1)
    assert lr_multiplier(cosine, 10, 110) == 1.0
    assert lr_multiplier(cosine, 60, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(cosine, 110, 110) == pytest.approx(0.1)
