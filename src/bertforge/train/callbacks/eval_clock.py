"""When the in-run evaluations (held-out MLM loss, the probe) are due; shared so that they fall on the same steps."""

from __future__ import annotations

from composer.core import State

from bertforge.train.config import parse_time


class EvalClock:
    """Due at the start of a fresh run (batch 0), on the first batch that reaches each multiple of ``interval``
    (batches, or tokens), and at the end unless the last batch was evaluated. A resumed run is due at the same
    steps as one that never stopped: the token count carries over from the checkpoint."""

    def __init__(self, interval: str):
        self.every, self.unit = parse_time(interval, "eval.interval")
        self._tokens_before = 0
        self._last_batch = -1

    def at_start(self, state: State) -> bool:
        self._tokens_before = int(state.timestamp.token)
        return int(state.timestamp.batch) == 0

    def after_batch(self, state: State) -> bool:
        batch, tokens = int(state.timestamp.batch), int(state.timestamp.token)
        if self.unit == "ba":
            due = batch % self.every == 0
        else:
            due = tokens // self.every > self._tokens_before // self.every
        self._tokens_before = tokens
        return due

    def at_end(self, state: State) -> bool:
        return int(state.timestamp.batch) != self._last_batch

    def evaluated(self, state: State) -> None:
        self._last_batch = int(state.timestamp.batch)
