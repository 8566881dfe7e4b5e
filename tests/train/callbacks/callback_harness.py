"""A real Composer Trainer over the packed loader and the tiny model, with only the callbacks a test names: each
callback is exercised on its own here, and in whole runs in tests/train."""

from __future__ import annotations

from pathlib import Path

from composer import Trainer
from composer.core import Callback
from helpers import run_config

from bertforge.model import ModernBertForMaskedLM
from bertforge.train.composer_model import MLMComposerModel
from bertforge.train.config import TrainConfig, load_train_config
from bertforge.train.optim import build_optimizer
from bertforge.train.run import build_data
from bertforge.train.steps import dataspec


class Recorder(Callback):
    """Calls ``record(event, state)`` at the events it is given; put it after the callback under test to see what
    that callback did at the same event."""

    def __init__(self, record, *events: str):
        self.record, self.events = record, events

    def run_event(self, event, state, logger) -> None:
        if event.value in self.events:
            self.record(event.value, state)


def train_config(tmp_path: Path, sample_data: dict, *overrides: str) -> TrainConfig:
    """The test run config (helpers.run_config) with dotted overrides, as on the command line."""
    return load_train_config(run_config(tmp_path, sample_data, "callbacks"), list(overrides))


def fit(config: TrainConfig, callbacks: list, max_duration: str = "3ba", seed: int = 0) -> Trainer:
    """Train ``config``'s model on its data for ``max_duration`` with exactly ``callbacks``."""
    loader, steps = build_data(config, world_size=1)
    model = ModernBertForMaskedLM(config.model)
    trainer = Trainer(model=MLMComposerModel(model), train_dataloader=dataspec(steps), max_duration=max_duration,
                      optimizers=build_optimizer(model, config.optimizer), device="cpu", precision="fp32",
                      device_train_microbatch_size=config.micro_batch_rows(1), accumulate_train_batch_on_tokens=True,
                      callbacks=callbacks, seed=seed, run_name=Path(config.save_folder).name, progress_bar=False,
                      log_to_console=False, save_folder=None)
    trainer.fit()
    return trainer
