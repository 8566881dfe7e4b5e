"""Set the learning rate before every batch from the real tokens seen so far."""

from __future__ import annotations

from collections.abc import Callable

from composer.core import Callback, State
from composer.loggers import Logger

from bertforge.train.config import ScheduleConfig
from bertforge.train.schedules import lr_at


class TokenScheduler(Callback):
    """Sets each step's LR to the schedule at the tokens before the step.

    A Composer scheduler would lag: Composer steps its schedulers before it advances the token clock, so the
    multiplier it computes after batch k still sees the tokens before batch k (two steps at LR 0 in warmup).
    At batch start the clock already counts every finished step, and a resumed run restores the clock, so the LR
    is a pure function of the checkpointed token count.
    """

    def __init__(self, config: ScheduleConfig, total_tokens: int, peak_lr: float,
                 lr_scale: Callable[[], float] = lambda: 1.0):
        """``lr_scale``: a factor on the schedule, read at each step (the divergence guard's, after rollbacks)."""
        self.config = config
        self.total_tokens = total_tokens
        self.peak_lr = peak_lr
        self.lr_scale = lr_scale

    def lr_at(self, tokens: int) -> float:
        return lr_at(self.config, self.peak_lr, tokens, self.total_tokens) * self.lr_scale()

    def batch_start(self, state: State, logger: Logger) -> None:
        lr = self.lr_at(int(state.timestamp.token))
        for optimizer in state.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
