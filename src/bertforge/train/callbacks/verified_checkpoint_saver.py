"""Composer's checkpoint saver, made trustworthy: it does not save after a step the divergence guard rejected (a
rollback then returns to the checkpoint before the trouble), refuses to save non-finite weights, and seals each
checkpoint with a checksum manifest once every rank has finished writing it; for a save_folder in an object store
it then uploads the checkpoint, manifest last, and deletes from the store what it rotates out.

Older checkpoints are rotated out only after the new one is sealed, so a crash at any moment leaves at most one
unsealed checkpoint, the newest, and a sealed one before it unless that unsealed one is the run's first save
(RunFolder.resume_point relies on this)."""

from __future__ import annotations

from pathlib import Path

import torch
from composer.callbacks import CheckpointSaver
from composer.core import State
from composer.loggers import Logger
from composer.utils import dist

from bertforge.checkpoint.manifest import MANIFEST_SUFFIX, write_manifest
from bertforge.checkpoint.run_folder import RunFolder
from bertforge.errors import TrainingDiverged
from bertforge.train.callbacks.divergence_guard import DivergenceGuard


def weights_are_finite(model: torch.nn.Module, device) -> bool:
    """Every parameter finite on every rank (FSDP2 shards checked where they live)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    bad = sum(int(not torch.isfinite(p.detach()).all()) for p in local)
    flag = device.tensor_to_device(torch.tensor([bad]))
    dist.all_reduce(flag, reduce_operation="MAX")
    return int(flag.item()) == 0


class VerifiedCheckpointSaver(CheckpointSaver):
    def __init__(self, *args, guard: DivergenceGuard, run_folder: RunFolder, **kwargs):
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.run_folder = run_folder
        self._rotation_deferred = False

    def _save_checkpoint(self, state: State, logger: Logger) -> None:
        if self.guard.last_step_rejected:
            return
        if not weights_are_finite(state.model, state.device):
            raise TrainingDiverged(f"the weights hold non-finite values at batch {int(state.timestamp.batch)}; "
                                   f"no checkpoint was written over the last good one")
        before = set(self.saved_checkpoints)
        self._rotation_deferred = True  # Composer rotates inside its save; here it waits for the seal below
        try:
            super()._save_checkpoint(state, logger)
        finally:
            self._rotation_deferred = False
        dist.barrier()  # every rank's shard is on disk
        if dist.get_global_rank() == 0:
            for saved in set(self.saved_checkpoints) - before:
                write_manifest(_checkpoint_root(Path(saved), state))
                self.run_folder.push_checkpoint(_checkpoint_root(Path(saved), state))
        dist.barrier()  # sealed: now the checkpoints it supersedes may go
        if self.num_checkpoints_to_keep >= 0:
            self._rotate_checkpoints(sharding_enabled=state.fsdp_sharded_state_dict_enabled)
        if dist.get_global_rank() == 0:
            for manifest in Path(self.folder).glob(f"*{MANIFEST_SUFFIX}"):  # those of rotated-out checkpoints
                if not manifest.with_name(manifest.name.removesuffix(MANIFEST_SUFFIX)).exists():
                    manifest.unlink()
        dist.barrier()

    def _rotate_checkpoints(self, sharding_enabled: bool = False) -> None:
        if self._rotation_deferred:
            return
        # A rollback moves the checkpoints it supersedes into incomplete/; they are no longer this saver's to delete.
        self.saved_checkpoints = [path for path in self.saved_checkpoints if Path(path).exists()]
        before = list(self.saved_checkpoints)
        super()._rotate_checkpoints(sharding_enabled)
        if dist.get_global_rank() == 0:
            gone = [Path(p) for p in before if p not in self.saved_checkpoints]
            self.run_folder.forget([(p.parent if sharding_enabled else p).name for p in gone])


def _checkpoint_root(saved: Path, state: State) -> Path:
    """The file of a monolithic checkpoint, or the directory of a sharded one (Composer lists a file in it)."""
    return saved.parent if state.fsdp_sharded_state_dict_enabled else saved
