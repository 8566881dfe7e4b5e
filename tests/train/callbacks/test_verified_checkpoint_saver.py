"""VerifiedCheckpointSaver seals each checkpoint with a manifest that verifies, skips a step the guard rejected,
and refuses to save non-finite weights."""

import pytest
import torch
from callback_harness import Recorder, fit, train_config

from bertforge.checkpoint.manifest import manifest_path, verify_checkpoint
from bertforge.checkpoint.run_folder import CHECKPOINT_FILENAME, LATEST_FILENAME, RunFolder
from bertforge.errors import TrainingDiverged
from bertforge.train.callbacks.divergence_guard import DivergenceGuard
from bertforge.train.callbacks.verified_checkpoint_saver import VerifiedCheckpointSaver


def _saver(folder: RunFolder, guard: DivergenceGuard, keep: int = -1) -> VerifiedCheckpointSaver:
    return VerifiedCheckpointSaver(folder=str(folder.path), filename=CHECKPOINT_FILENAME, remote_file_name=None,
                                   latest_filename=LATEST_FILENAME, latest_remote_file_name=None,
                                   save_interval="2ba", overwrite=True, num_checkpoints_to_keep=keep, guard=guard,
                                   run_folder=folder)


def test_every_checkpoint_has_a_manifest_that_verifies(tmp_path, sample_data):
    config = train_config(tmp_path, sample_data)
    folder = RunFolder(tmp_path / "run")
    fit(config, [_saver(folder, DivergenceGuard(config.stability, folder))], max_duration="4ba")
    saved = sorted(p.name for p in folder.checkpoints())
    assert saved == ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt"]
    for checkpoint in folder.checkpoints():
        assert manifest_path(checkpoint).is_file() and verify_checkpoint(checkpoint) is None


def test_a_rejected_step_is_not_saved(tmp_path, sample_data):
    config = train_config(tmp_path, sample_data)
    folder = RunFolder(tmp_path / "run")
    guard = DivergenceGuard(config.stability, folder)
    reject = Recorder(lambda event, state: setattr(guard, "last_step_rejected", int(state.timestamp.batch) == 2),
                      "batch_end")
    fit(config, [reject, _saver(folder, guard)], max_duration="4ba")
    assert [p.name for p in folder.checkpoints()] == ["ep0-ba4-rank0.pt"]


def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path, sample_data):
    config = train_config(tmp_path, sample_data)
    folder = RunFolder(tmp_path / "run")

    def poison(event, state):
        with torch.no_grad():
            next(state.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite values at batch 2"):
        fit(config, [Recorder(poison, "batch_end"), _saver(folder, DivergenceGuard(config.stability, folder))],
            max_duration="4ba")
    assert folder.checkpoints() == []


def test_an_older_checkpoint_is_rotated_out_only_after_the_new_one_is_sealed(tmp_path, sample_data, monkeypatch):
    """Were the old one deleted first, a crash before the seal would leave a lone unsealed checkpoint, which a
    restart must take for a cut-off first save."""
    import bertforge.train.callbacks.verified_checkpoint_saver as saver_module

    folder = RunFolder(tmp_path / "run")
    present_at_seal = []
    write_manifest = saver_module.write_manifest

    def seal(checkpoint):  # the real seal, noting which checkpoints are on disk as it is written
        present_at_seal.append(sorted(p.name for p in folder.checkpoints()))
        return write_manifest(checkpoint)
    monkeypatch.setattr(saver_module, "write_manifest", seal)
    config = train_config(tmp_path, sample_data)
    fit(config, [_saver(folder, DivergenceGuard(config.stability, folder), keep=1)], max_duration="6ba")
    assert present_at_seal == [["ep0-ba2-rank0.pt"], ["ep0-ba2-rank0.pt", "ep0-ba4-rank0.pt"],
                               ["ep0-ba4-rank0.pt", "ep0-ba6-rank0.pt"]]
    assert [p.name for p in folder.checkpoints()] == ["ep0-ba6-rank0.pt"]
    assert [p.name for p in folder.path.glob("*.manifest.json")] == ["ep0-ba6-rank0.pt.manifest.json"]
