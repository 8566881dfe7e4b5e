"""A run config's ``downstream:`` tasks: loaded (and so checked) before the run trains, fine-tuned on its export
when it ends, the table in ``<save_folder>/downstream/``. `bertforge train` and `bertforge quickstart` both train
through ``train_with_downstream``."""

from __future__ import annotations

import os
from pathlib import Path

from bertforge.finetune.config import RetrievalTaskConfig, TaskConfig
from bertforge.finetune.suite import check_tasks, format_table, load_suite, run_suite
from bertforge.train.config import TrainConfig
from bertforge.train.launcher import adopt_launcher_environment, launcher_world_size
from bertforge.train.preflight import preflight


def load_downstream(targets: list[str]) -> list[TaskConfig | RetrievalTaskConfig]:
    """The tasks of a run's ``downstream:`` list (task YAMLs or suites such as ``glue``), checked as far as can be
    before the run trains (a retrieval task's BEIR files)."""
    tasks = [task for target in targets for task in load_suite(target)]
    check_tasks(tasks)
    return tasks


def train_with_downstream(config: TrainConfig) -> Path:
    """Train ``config`` (train.run.train: it raises StoppedBySignal or TrainingDiverged when the run stops early),
    then, on rank 0, fine-tune its export on the ``downstream:`` tasks and print their table. The tasks are loaded
    first, so a task that cannot load fails before any training."""
    tasks = load_downstream(config.downstream)
    adopt_launcher_environment()
    preflight(config, launcher_world_size(), device=None)
    # Imported after the checks: torch and Composer take about 10 s to import, and a config that cannot run is
    # refused before that (the device check waits for torch, in train).
    from bertforge.train.run import train  # noqa: PLC0415

    folder = train(config)
    print(f"run finished; checkpoints and metrics in {folder}", flush=True)
    if tasks and os.environ.get("RANK", "0") == "0":
        out = f"{config.save_folder}/downstream"
        print(format_table(run_suite(tasks, config.export_dir, out)), end="")
        print(f"downstream results in {out}/results.json", flush=True)
    return folder
