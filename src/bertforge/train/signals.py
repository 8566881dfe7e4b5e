"""Record a stop signal (SIGUSR1, SIGTERM) from the first moment of a training process; acting on it is the job of
the ``StopOnSignal`` callback (``callbacks/stop_on_signal.py``).

Importing torch and Composer takes about ten seconds, and Python's default action for either signal is to die. A
signal in that window (Slurm's time-limit warning for a job that started late, a preemption) would kill a rank
without a checkpoint and without the exit code that requeues the job. So ``bertforge train`` installs these
handlers before it imports anything heavy; the callback acts on what they recorded at the first step boundary.
This module uses the standard library only, to stay cheap to import.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

REQUEUE_EXIT_CODE = 75
"""EX_TEMPFAIL: stopped by a signal after a checkpoint; running the same command again resumes the run."""

_received: signal.Signals | None = None


def _record(signum: int, frame) -> None:
    global _received
    _received = signal.Signals(signum)


def record_stop_signals() -> None:
    """Replace the default (fatal) action of the stop signals with recording them; safe to call again."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _record)


def take_stop_signal() -> signal.Signals | None:
    """The signal recorded since the last call, if any. Taking it clears it, so a signal that stopped one run
    does not also stop the next run in the same process."""
    global _received
    taken = _received
    # Clear only when something was taken, so a signal that arrives after an empty read is kept; one that arrives
    # just after a non-empty read repeats the stop already under way.
    if taken is not None:
        _received = None
    return taken
