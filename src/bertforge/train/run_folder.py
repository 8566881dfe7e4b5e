"""The layout of a run's ``save_folder``: every file name the trainer, export, plan, W&B and Slurm use, in one place.

    save_folder/
      config.yaml          the resolved run config
      metrics.jsonl        one JSON object per logged step
      curves.png           loss and LR against tokens
      wandb_run_id         the W&B run id, reused by restarts
      ep0-ba800-rank0.pt   Composer checkpoints (an FSDP2 sharded one is a directory ep0-ba800/)
      latest-rank0.pt      Composer's link to the newest complete checkpoint
      incomplete/          checkpoints newer than that link, set aside before a resume
      slurm/               the rendered sbatch script and the job's log

Imports no torch at module level; reading a checkpoint loads it when called.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bertforge.schema import ConfigError

CHECKPOINT_FILENAME = "ep{epoch}-ba{batch}-rank{rank}.pt"
"""Composer's ``save_filename``: a monolithic checkpoint; FSDP2 sharded checkpoints drop the '-rank' part and the
'.pt' and become a directory."""
LATEST_FILENAME = "latest-rank{rank}.pt"
"""Composer's ``save_latest_filename``: re-pointed at each checkpoint once it is complete."""
_CHECKPOINT_NAME = re.compile(r"^ep\d+-ba(\d+)")


class RunFolder:
    """A run's save folder; its properties are the paths of what lies in it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def wandb_run_id(self) -> Path:
        return self.path / "wandb_run_id"

    @property
    def latest(self) -> Path:
        return self.path / LATEST_FILENAME.format(rank=0)

    @property
    def incomplete(self) -> Path:
        return self.path / "incomplete"

    @property
    def slurm(self) -> Path:
        return self.path / "slurm"

    def final_checkpoint(self) -> Path:
        """The checkpoint a finished run (a previous phase) ended with: the ``latest`` link, followed."""
        if not self.latest.exists():
            raise ConfigError(f"the previous phase has no checkpoint in '{self.path}' (no {self.latest.name}); run "
                              f"it first, or set checkpoint.load_path yourself")
        return self.latest.resolve()

    def set_aside_unfinished_checkpoints(self) -> list[Path]:
        """Move checkpoints newer than ``latest`` into ``incomplete/`` before autoresume.

        Composer writes a checkpoint file in place and re-points ``latest`` only once it is complete, so a run
        killed in between leaves a newer, possibly partial file that would block the resumed run. It is kept, not
        deleted.
        """
        if not self.path.is_dir():
            return []
        latest, resumed_batch = self.latest, -1
        if latest.is_symlink() or latest.exists():
            match = _CHECKPOINT_NAME.match(Path(os.readlink(latest)).name if latest.is_symlink() else "")
            resumed_batch = int(match.group(1)) if match else -1
        moved = []
        for path in sorted(self.path.iterdir()):
            match = _CHECKPOINT_NAME.match(path.name)
            if match and int(match.group(1)) > resumed_batch:
                self.incomplete.mkdir(exist_ok=True)
                target = self.incomplete / path.name
                path.rename(target)
                moved.append(target)
        return moved


def read_checkpoint_state(path: Path) -> dict:
    """The ``state`` of a monolithic checkpoint, or the model and RunState parts of a sharded (DCP) one, read
    in this one process without the optimizer state (no process group needed)."""
    import torch

    if not path.is_dir():
        return torch.load(path, map_location="cpu", weights_only=False)["state"]
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    if not (path / ".metadata").is_file():
        raise ValueError(f"{path}: a directory but not a sharded checkpoint (no .metadata)")
    reader = FileSystemReader(str(path))
    keys = {key for key in reader.read_metadata().state_dict_metadata
            if key.startswith(("state.model.", "state.callbacks.RunState.model_config"))}
    return _load_state_dict_from_keys(keys, storage_reader=reader)["state"]
