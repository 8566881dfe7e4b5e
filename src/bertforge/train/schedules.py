"""Learning-rate schedules measured in tokens, so a run can be 2 trillion tokens long.

Pure arithmetic: the trainer's LR callback (``callbacks/token_lr.py``) and `bertforge plan` both call ``lr_at``, so
the plan and the run cannot disagree.
"""

from __future__ import annotations

import math

from bertforge.train.config import ScheduleConfig


def _decay(progress: float, shape: str) -> float:
    """1 -> 0 as progress goes 0 -> 1."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - math.sqrt(progress)


def lr_multiplier(config: ScheduleConfig, tokens: int, total_tokens: int) -> float:
    """The fraction of peak LR after ``tokens`` of a ``total_tokens`` run."""
    if config.warmup_tokens and tokens < config.warmup_tokens:
        return tokens / config.warmup_tokens
    floor = config.min_lr_ratio
    if config.name == "constant":
        return 1.0
    if config.name == "cosine":
        span = max(total_tokens - config.warmup_tokens, 1)
        return floor + (1 - floor) * _decay(min((tokens - config.warmup_tokens) / span, 1.0), "cosine")
    decay_start = total_tokens - config.decay_tokens
    if not config.decay_tokens or tokens < decay_start:
        return 1.0
    return floor + (1 - floor) * _decay(min((tokens - decay_start) / config.decay_tokens, 1.0), config.decay_shape)


def lr_at(config: ScheduleConfig, peak_lr: float, tokens: int, total_tokens: int) -> float:
    """The learning rate of the step that starts after ``tokens`` real tokens."""
    return peak_lr * lr_multiplier(config, tokens, total_tokens)
