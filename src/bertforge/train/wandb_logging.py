"""Weights & Biases through Composer's WandBLogger, with one W&B run per training run across restarts."""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.atomic import write_text_atomic


@dataclass
class WandbConfig:
    enabled: bool = False
    """Log to Weights & Biases (WANDB_MODE=offline works without a network)."""
    project: str = "bertforge"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user); None uses the logged-in default."""
    group: str | None = None
    """W&B group, e.g. the name of a phase chain."""
    tags: list[str] = field(default_factory=list)
    """W&B run tags."""
    run_id: str | None = None
    """W&B run id; None takes WANDB_RUN_ID, else the id saved in save_folder, else a new one, so a resumed or
    requeued run keeps logging to the same W&B run."""


def run_id(config: WandbConfig, save_folder: Path) -> str:
    """The W&B run id of this training run, saved next to its checkpoints so a restart reuses it."""
    saved = save_folder / "wandb_run_id"
    chosen = config.run_id or os.environ.get("WANDB_RUN_ID")
    if not chosen and saved.is_file():
        chosen = saved.read_text().strip()
    chosen = chosen or secrets.token_hex(4)
    if not saved.is_file() or saved.read_text().strip() != chosen:
        write_text_atomic(saved, chosen + "\n")
    return chosen


def build_wandb_logger(train_config, save_folder: Path, rank_zero: bool, lineage: dict):
    """Composer's WandBLogger (logging from rank 0 only, but built on every rank: its init is a collective), with
    the run's W&B id, and the resolved config plus the phase lineage as the run config.

    Composer asks every logger for the latest checkpoint when autoresume finds none locally. We never upload
    checkpoints to W&B, and the W&B API call it makes needs a network even in offline mode, so the answer is
    'not there' without asking.
    """
    from composer.loggers import WandBLogger

    class LocalCheckpointsWandBLogger(WandBLogger):
        def download_file(self, remote_file_name: str, destination: str, overwrite: bool = False,
                          progress_bar: bool = True) -> None:
            raise FileNotFoundError(f"{remote_file_name}: bertforge keeps checkpoints in save_folder, not in W&B")

    config: WandbConfig = train_config.wandb
    init_kwargs = {}
    if rank_zero:
        save_folder.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"config": dataclasses.asdict(train_config) | {"lineage": lineage}, "dir": str(save_folder),
                       "id": run_id(config, save_folder), "resume": "allow"}
    return LocalCheckpointsWandBLogger(
        project=config.project, entity=config.entity, group=config.group, name=train_config.run_name,
        tags=config.tags or None, log_artifacts=False, rank_zero_only=True, init_kwargs=init_kwargs)
