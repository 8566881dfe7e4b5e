"""Weights & Biases through Composer's WandBLogger, with one W&B run per training run across restarts."""

from __future__ import annotations

import dataclasses
import os
import secrets

from composer.loggers import WandBLogger

from bertforge.atomic import write_text_atomic
from bertforge.checkpoint.run_folder import RunFolder
from bertforge.train.config import TrainConfig, WandbConfig


def run_id(config: WandbConfig, folder: RunFolder) -> str:
    """The W&B run id of this training run, saved next to its checkpoints so a restart reuses it."""
    saved = folder.wandb_run_id
    chosen = config.run_id or os.environ.get("WANDB_RUN_ID")
    if not chosen and saved.is_file():
        chosen = saved.read_text().strip()
    chosen = chosen or secrets.token_hex(4)
    if not saved.is_file() or saved.read_text().strip() != chosen:
        write_text_atomic(saved, chosen + "\n")
    return chosen


def build_wandb_logger(train_config: TrainConfig, folder: RunFolder, rank_zero: bool, lineage: dict):
    """Composer's WandBLogger (logging from rank 0 only, but built on every rank: its init is a collective), with
    the run's W&B id, and the resolved config plus the phase lineage as the run config. (Composer's autoresume,
    which would ask W&B for checkpoints over the network, is not used: see RunFolder.resume_point.)
    """
    config: WandbConfig = train_config.wandb
    init_kwargs = {}
    if rank_zero:
        folder.path.mkdir(parents=True, exist_ok=True)
        init_kwargs = {"config": dataclasses.asdict(train_config) | {"lineage": lineage}, "dir": str(folder.path),
                       "id": run_id(config, folder), "resume": "allow"}
    return WandBLogger(
        project=config.project, entity=config.entity, group=config.group, name=train_config.run_name,
        tags=config.tags or None, log_artifacts=False, rank_zero_only=True, init_kwargs=init_kwargs)
