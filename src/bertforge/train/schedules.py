"""Learning-rate schedules measured in tokens, as Composer schedulers, so a run can be 2 trillion tokens long."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from composer.core import Callback

from bertforge.schema import ConfigError

ScheduleName = Literal["wsd", "constant", "cosine"]
DecayShape = Literal["linear", "cosine", "1-sqrt"]


@dataclass
class ScheduleConfig:
    name: ScheduleName = "wsd"
    """wsd (warmup, stable, decay), constant (after warmup), or cosine (warmup then cosine to min)."""
    warmup_tokens: int = 0
    """Linear warmup from 0 over this many tokens."""
    decay_tokens: int = 0
    """wsd only: the final decay lasts this many tokens (0: no decay)."""
    decay_shape: DecayShape = "linear"
    """wsd only: shape of the final decay."""
    min_lr_ratio: float = 0.0
    """LR at the end of a decay, as a fraction of the peak."""

    def __post_init__(self) -> None:
        if self.warmup_tokens < 0 or self.decay_tokens < 0:
            raise ConfigError("'warmup_tokens' and 'decay_tokens' must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")


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


class TokenScheduler(Callback):
    """Sets the learning rate before every batch from the real tokens seen so far.

    A Composer scheduler would lag: Composer steps its schedulers before it advances the token clock, so the
    multiplier it computes after batch k still sees the tokens before batch k (two steps at LR 0 in warmup).
    At batch start the clock already counts every finished step, and a resumed run restores the clock, so the LR
    is a pure function of the checkpointed token count.
    """

    def __init__(self, config: ScheduleConfig, total_tokens: int, peak_lr: float):
        self.config = config
        self.total_tokens = total_tokens
        self.peak_lr = peak_lr

    def lr_at(self, tokens: int) -> float:
        return self.peak_lr * lr_multiplier(self.config, tokens, self.total_tokens)

    def batch_start(self, state, logger) -> None:
        lr = self.lr_at(int(state.timestamp.token))
        for optimizer in state.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
