"""Faults a long run meets, each reproduced for real: divergence, a lost or broken checkpoint, a crafted pickle, two
runs on one folder. Each must fail loudly or recover, and never leave a run that looks fine but is not."""

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import read_metrics, run_config

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def _train(config: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFORGE, "train", str(config), *extra], capture_output=True, text=True,
                          timeout=600, **kwargs)


def _json_lines(path: Path) -> list[dict]:
    """Every line of a JSON-lines file, parsed strictly: a bare NaN or Infinity is an error, as in any other
    reader than Python's."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines() if line.strip()]


def _checkpoint_weights(path: Path) -> list[torch.Tensor]:
    from bertforge.checkpoint.run_folder import read_checkpoint_state

    return list(read_checkpoint_state(path)["model"].values())


def test_divergence_stops_the_run_loudly_and_keeps_only_finite_checkpoints(tmp_path, sample_data):
    """LR 1000 drives the loss to NaN within a few steps. The run must not print success and exit 0 with NaN
    checkpoints and a NaN export: the guard drops each bad step, rolls back (3 times by default), then stops with
    the step and tokens named; every checkpoint holds finite weights; metrics.jsonl stays valid JSON."""
    config = run_config(tmp_path, sample_data, "nan", export_dir=str(tmp_path / "hf"),
                        optimizer={"name": "stableadamw", "lr": 1000.0}, checkpoint={"interval": "2ba", "keep": 3})
    result = _train(config)
    assert result.returncode == 3, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("bertforge: error: stopped by the divergence guard at batch ") and "tokens" in error
    assert "rollbacks allowed are used up" in error
    assert not (tmp_path / "hf").exists()
    folder = tmp_path / "nan"
    checkpoints = sorted(folder.glob("ep0-ba*-rank0.pt"))
    assert checkpoints
    for checkpoint in checkpoints:
        assert all(torch.isfinite(w).all() for w in _checkpoint_weights(checkpoint)), checkpoint
    rows = _json_lines(folder / "metrics.jsonl")
    events = [row for row in rows if "event" in row]
    assert [e["event"] for e in events] == ["rollback", "rollback", "rollback", "stop"]
    assert all(e["nonfinite"] or "standard deviations" in e["reason"] for e in events)
    assert any(row.get("loss") is None and row.get("nonfinite") for row in rows if "event" not in row)


def test_non_finite_weights_are_never_checkpointed_even_with_the_guard_off(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "unguarded", optimizer={"name": "stableadamw", "lr": 1000.0},
                        checkpoint={"interval": "2ba", "keep": -1}, stability={"enabled": False})
    result = _train(config)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "the weights hold non-finite values at batch 4; no checkpoint was written" in result.stderr
    checkpoints = sorted((tmp_path / "unguarded").glob("ep0-ba*-rank0.pt"))
    assert [p.name for p in checkpoints] == ["ep0-ba2-rank0.pt"]
    assert all(torch.isfinite(w).all() for w in _checkpoint_weights(checkpoints[0]))


def _spiky_run(tmp_path: Path, sample_data: dict, name: str) -> Path:
    """LR 3 makes the loss jump within the first steps; each rollback divides the LR by 10, so the run recovers."""
    return run_config(tmp_path, sample_data, name, max_duration=f"{16 * 1024}tok",
                      optimizer={"name": "adamw", "lr": 3.0}, checkpoint={"interval": "1ba", "keep": -1},
                      stability={"on_nonfinite": "rollback", "on_spike": "rollback", "min_history": 2,
                                 "loss_zscore": 4.0, "rollback_lr_scale": 0.1, "max_rollbacks": 5})


def _decisions(folder: Path) -> set[tuple]:
    return {(e["event"], e["batch"], e["tokens_before"]) for e in _json_lines(folder / "metrics.jsonl") if "event" in e}


def test_spike_rollback_finishes_finite_and_decides_the_same_after_a_kill(tmp_path, sample_data):
    reference = _spiky_run(tmp_path, sample_data, "spiky")
    result = _train(reference)
    assert result.returncode == 0, result.stderr[-3000:]
    decisions = _decisions(tmp_path / "spiky")
    assert any(event == "rollback" for event, _, _ in decisions), decisions
    final = read_metrics(tmp_path / "spiky")
    assert math.isfinite(final[max(final)]["loss"]) and final[max(final)]["tokens"] >= 16 * 1024

    killed = _spiky_run(tmp_path, sample_data, "killed")
    folder = tmp_path / "killed"
    proc = subprocess.Popen([BERTFORGE, "train", str(killed)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not _has_rollback(folder):
        time.sleep(0.05)
    time.sleep(1.0)  # into the steps after the first rollback
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _has_rollback(folder)
    result = _train(killed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _decisions(folder) == decisions
    resumed = read_metrics(folder)
    assert sorted(resumed) == sorted(final)
    for batch, row in final.items():
        assert resumed[batch]["loss"] == pytest.approx(row["loss"], abs=1e-6), batch


def _has_rollback(folder: Path) -> bool:
    metrics = folder / "metrics.jsonl"
    return metrics.exists() and '"event": "rollback"' in metrics.read_text()


@pytest.fixture(scope="module")
def eight_steps(tmp_path_factory, sample_data) -> Path:
    """A finished 8-step run with checkpoints at batches 4 and 8, to damage in copies."""
    root = tmp_path_factory.mktemp("damaged")
    config = run_config(root, sample_data, "base", max_duration=f"{8 * 1024}tok")
    result = _train(config)
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "base"


def _damage(folder: Path, how: str) -> None:
    newest = folder / "ep0-ba8-rank0.pt"
    if how == "latest link deleted":
        (folder / "latest-rank0.pt").unlink()
    elif how == "truncated":
        with newest.open("r+b") as fh:
            fh.truncate(newest.stat().st_size // 2)
    elif how == "16 bytes flipped":
        data = bytearray(newest.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
        newest.write_bytes(bytes(data))


@pytest.mark.parametrize("how,resumes_after,reason", [
    ("latest link deleted", 8, None),
    ("truncated", 4, "(truncated or rewritten)"),
    ("16 bytes flipped", 4, "does not match its checksum (corrupted)"),
])
def test_autoresume_takes_the_newest_checkpoint_that_verifies(tmp_path, eight_steps, how, resumes_after, reason):
    folder = tmp_path / "run"
    shutil.copytree(eight_steps, folder, symlinks=True)
    _damage(folder, how)
    config = folder.parent / "run.yaml"
    original = (eight_steps.parent / "base.yaml").read_text()
    config.write_text(original.replace(str(eight_steps), str(folder)))
    result = _train(config, f"max_duration={12 * 1024}tok")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    batches = [row["batch"] for row in rows if "event" not in row]
    assert batches == [*range(1, 9), *range(resumes_after + 1, 13)]  # never from batch 1 again
    if reason:
        assert f"passing over checkpoint {folder / 'ep0-ba8-rank0.pt'}: ep0-ba8-rank0.pt" in result.stdout
        assert reason in result.stdout
        assert (folder / "incomplete" / "ep0-ba8-rank0.pt").is_file()  # kept, not deleted


def test_a_folder_of_checkpoints_none_of_which_verifies_is_not_restarted_from_scratch(tmp_path, eight_steps):
    folder = tmp_path / "run"
    shutil.copytree(eight_steps, folder, symlinks=True)
    for manifest in folder.glob("*.manifest.json"):
        manifest.unlink()
    config = folder.parent / "run.yaml"
    config.write_text((eight_steps.parent / "base.yaml").read_text().replace(str(eight_steps), str(folder)))
    result = _train(config, f"max_duration={12 * 1024}tok")
    assert result.returncode == 2
    assert "holds checkpoints but none verifies" in result.stderr
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 8


def test_a_first_save_cut_off_by_a_crash_is_set_aside_and_the_run_starts_afresh(tmp_path, eight_steps):
    """A kill during the first save leaves one checkpoint without a manifest and the metrics of batches that no
    checkpoint holds: the restart keeps both aside and trains from batch 1, its record starting there."""
    folder = tmp_path / "run"
    shutil.copytree(eight_steps, folder, symlinks=True)
    for leftover in ("ep0-ba4-rank0.pt", "ep0-ba4-rank0.pt.manifest.json", "ep0-ba8-rank0.pt.manifest.json"):
        (folder / leftover).unlink()
    config = folder.parent / "run.yaml"
    config.write_text((eight_steps.parent / "base.yaml").read_text().replace(str(eight_steps), str(folder)))
    result = _train(config, f"max_duration={4 * 1024}tok")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "moved ep0-ba8-rank0.pt, the run's first save, cut off before it was sealed" in result.stdout
    assert (folder / "incomplete" / "ep0-ba8-rank0.pt").is_file()
    assert len((folder / "incomplete" / "metrics.jsonl").read_text().splitlines()) == 8
    assert [row["batch"] for row in _json_lines(folder / "metrics.jsonl") if "event" not in row] == [1, 2, 3, 4]


class _Payload:
    """What a crafted checkpoint does when unpickled: create a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pickle_is_refused_by_export_and_by_training(tmp_path, sample_data):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state": {"model": {}, "payload": _Payload(marker)}}, evil)

    exported = subprocess.run([BERTFORGE, "export", str(evil), str(tmp_path / "out")], capture_output=True,
                              text=True, timeout=300)
    assert exported.returncode == 2, exported.stderr[-3000:]
    assert f"{evil}: refused to load" in exported.stderr and "system" in exported.stderr
    config = run_config(tmp_path, sample_data, "victim")
    trained = _train(config, f"checkpoint.load_path={evil}")
    assert trained.returncode == 2 and f"{evil}: refused to load" in trained.stderr
    # A sharded checkpoint's index is plain pickle to torch.distributed.checkpoint.
    sharded = tmp_path / "ep0-ba4"
    sharded.mkdir()
    (sharded / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    exported = subprocess.run([BERTFORGE, "export", str(sharded), str(tmp_path / "out")], capture_output=True,
                              text=True, timeout=300)
    assert exported.returncode == 2 and f"{sharded / '.metadata'}: refused to load" in exported.stderr
    assert not marker.exists()


def test_a_second_run_on_the_same_folder_is_refused_before_it_writes(tmp_path, sample_data):
    config = run_config(tmp_path, sample_data, "busy", max_duration=f"{400 * 1024}tok")
    folder = tmp_path / "busy"
    first = subprocess.Popen([BERTFORGE, "train", str(config)], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (folder / "metrics.jsonl").exists():
            time.sleep(0.1)
        written = (folder / "config.yaml").read_text()
        second = _train(config, "optimizer.lr=0.01")
        assert second.returncode == 2
        assert f"is in use by another bertforge train (pid {first.pid} on" in second.stderr
        assert (folder / "config.yaml").read_text() == written
        assert all("event" in row or row["lr"] < 0.01 for row in _json_lines(folder / "metrics.jsonl"))
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # leaves its lock behind, as a crash does
        first.wait()
    assert json.loads((folder / "run.lock").read_text())["pid"] == first.pid
    # The holder is dead on this host: the next run takes the lock over and resumes, for two more steps (of 1024
    # tokens) past wherever the first run's last checkpoint is, however far it got before the kill.
    saved = max((int(p.name.split("-ba")[1].split("-")[0]) for p in folder.glob("ep*-ba*-rank0.pt")), default=0)
    third = _train(config, f"max_duration={1024 * (saved + 2)}tok", "checkpoint.interval=2ba")
    assert third.returncode == 0, third.stderr[-3000:]
    assert not (folder / "run.lock").exists()


def test_keep_zero_is_refused(tmp_path, sample_data):
    result = _train(run_config(tmp_path, sample_data, "keep0"), "checkpoint.keep=0")
    assert result.returncode == 2
    assert "in 'checkpoint': 'keep' must be -1 (keep all) or at least 1, got 0" in result.stderr
