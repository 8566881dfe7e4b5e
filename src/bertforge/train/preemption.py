"""Stop cleanly on a signal: finish the step, write a checkpoint, exit with a code that asks for a requeue.

Slurm sends SIGUSR1 ahead of a time limit when a job asks for it (``--signal=USR1@300``), and SIGTERM when it
preempts or cancels a job. Either way the run has a short grace period; losing everything since the last periodic
checkpoint would waste up to a whole interval of the cluster, so the trainer saves at the next step boundary.
"""

from __future__ import annotations

import signal

import torch
from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

REQUEUE_EXIT_CODE = 75
"""EX_TEMPFAIL: stopped by a signal after a checkpoint; running the same command again resumes the run."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StoppedBySignal(Exception):
    """The run stopped early, on purpose, after saving a checkpoint it will resume from."""


class StopOnSignal(Callback):
    """Records a stop signal in its handler, and at the next step end (agreed over all ranks, which may have
    received it at different steps) stops training; Composer's checkpoint saver then saves, as at any end of
    training. The handlers are installed when the object is made, so a signal during set-up is not fatal."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.received: signal.Signals | None = None
        self.stopped_at_batch: int | None = None
        for sig in signals:
            signal.signal(sig, self._record)

    def _record(self, signum: int, frame) -> None:
        self.received = signal.Signals(signum)

    def batch_end(self, state: State, logger: Logger) -> None:
        flag = state.device.tensor_to_device(torch.tensor([0 if self.received is None else int(self.received)]))
        dist.all_reduce(flag, reduce_operation="MAX")
        if int(flag.item()) and self.stopped_at_batch is None:
            self.received = self.received or signal.Signals(int(flag.item()))
            self.stopped_at_batch = int(state.timestamp.batch)
            state.stop_training()
            if dist.get_global_rank() == 0:
                print(f"received {self.received.name}: stopping after batch {self.stopped_at_batch} with a "
                      f"checkpoint", flush=True)
