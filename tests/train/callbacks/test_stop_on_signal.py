"""StopOnSignal stops at the step boundary after a stop signal arrives, and only once."""

import os
import signal

from callback_harness import Recorder, fit, train_config

from bertforge.train.callbacks.stop_on_signal import StopOnSignal
from bertforge.train.signals import STOP_SIGNALS, take_stop_signal


def test_a_signal_stops_the_run_after_the_step_it_arrives_in(tmp_path, sample_data):
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        stopper = StopOnSignal()  # records SIGUSR1 / SIGTERM from here on instead of dying
        send = Recorder(lambda event, state: int(state.timestamp.batch) == 1 and os.kill(os.getpid(), signal.SIGUSR1),
                        "before_train_batch")
        trainer = fit(train_config(tmp_path, sample_data), [send, stopper], max_duration="6ba")
        assert stopper.received == signal.SIGUSR1
        assert stopper.stopped_at_batch == 2 == int(trainer.state.timestamp.batch)  # the step under way finished
        assert take_stop_signal() is None  # taken: a later run in this process is not stopped by it
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_without_a_signal_the_run_goes_to_its_end(tmp_path, sample_data):
    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        stopper = StopOnSignal()
        trainer = fit(train_config(tmp_path, sample_data), [stopper], max_duration="3ba")
        assert stopper.received is None and int(trainer.state.timestamp.batch) == 3
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
