"""Stop cleanly on a recorded signal (``train/signals.py``): finish the step, write a checkpoint, and let
`bertforge train` exit with the code that asks for a requeue.

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

from bertforge.train.signals import record_stop_signals, take_stop_signal


class StopOnSignal(Callback):
    """At each step end, asks whether any rank has recorded a stop signal (ranks may receive it at different
    steps, so they agree by an all-reduce) and if so stops training; Composer's checkpoint saver then saves, as at
    any end of training. ``bertforge train`` records signals from its first moment (``signals``); making
    this callback records them too, for runs started from Python."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self.stopped_at_batch: int | None = None
        record_stop_signals()

    def batch_end(self, state: State, logger: Logger) -> None:
        mine = take_stop_signal()
        flag = state.device.tensor_to_device(torch.tensor([0 if mine is None else int(mine)]))
        dist.all_reduce(flag, reduce_operation="MAX")
        if int(flag.item()) and self.stopped_at_batch is None:
            self.received = mine or signal.Signals(int(flag.item()))
            self.stopped_at_batch = int(state.timestamp.batch)
            state.stop_training()
            if dist.get_global_rank() == 0:
                print(f"received {self.received.name}: stopping after batch {self.stopped_at_batch} with a "
                      f"checkpoint", flush=True)
