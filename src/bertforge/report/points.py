"""The points of a report: a freshly initialised model of the run's config, then the run's checkpoints (all, or the
first at or past each multiple of ``every`` tokens from ``every`` on) with the tokens each had seen. A run folder in
an object store is listed there and each checkpoint fetched (and verified) only when its point is scored."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

from bertforge.checkpoint.manifest import verify_checkpoint
from bertforge.checkpoint.run_folder import RunFolder, checkpoint_batch, open_run_folder, read_metric_records
from bertforge.errors import CheckpointError, ConfigError
from bertforge.store import is_remote


@dataclass
class Point:
    name: str
    """``fresh``, or ``step<batch>-tokens<tokens>`` (as `bertforge export --all` names its folders)."""
    tokens: int
    """Real tokens the model had trained on (0 for the fresh model)."""
    checkpoint: str | None = None
    """The checkpoint's file or folder name in the run folder; None for the fresh model."""


def open_report_run(run: str, staging: Path) -> RunFolder:
    """The run folder, with its config.yaml and metrics.jsonl; one in an object store gets a staging folder of the
    report's own (the run itself may be writing into its usual one)."""
    folder = open_run_folder(run, str(staging)) if is_remote(run) else RunFolder(run)
    if folder.remote is not None:
        folder.path.mkdir(parents=True, exist_ok=True)
        stored = folder.remote.sizes()
        for entry in (folder.config, folder.metrics):
            if entry.name in stored:
                folder.remote.download(entry.name, entry)
    if not folder.config.is_file():
        raise ConfigError(f"{folder.location} holds no config.yaml: not a bertforge run folder (pass a run's "
                          f"save_folder)")
    return folder


def tokens_at(records: list[dict], batch: int) -> int | None:
    """Tokens seen after ``batch``: its metrics.jsonl record, else interpolated between the records around it
    (exact for steps of a constant batch of full rows), else None."""
    steps = sorted({row["batch"]: row["tokens"] for row in records if "batch" in row and "tokens" in row}.items())
    if not steps:
        return None
    batches = [b for b, _ in steps]
    at = bisect.bisect_left(batches, batch)
    if at < len(steps) and batches[at] == batch:
        return steps[at][1]
    if at == 0 or at == len(steps):
        return None
    (b0, t0), (b1, t1) = steps[at - 1], steps[at]
    return round(t0 + (t1 - t0) * (batch - b0) / (b1 - b0))


def checkpoint_names(folder: RunFolder) -> list[str]:
    """The run's checkpoints, oldest first: every one listed locally (complete or not: verification comes when
    each is scored), or every complete one in the object store."""
    if folder.remote is not None:
        names = folder.stored_checkpoints()
    else:
        names = [path.name for path in folder.checkpoints()]
    return sorted(names, key=lambda name: checkpoint_batch(Path(name)))


def report_points(folder: RunFolder, every: int | None = None) -> list[Point]:
    """The fresh model, then each checkpoint; with ``every``, the first checkpoint at or past each multiple of it
    from the first on (the fresh model stands for 0: a checkpoint a few steps in, a stop and resume early in the
    run, would cost as much to score and say nothing more)."""
    records = read_metric_records(folder.metrics) if folder.metrics.is_file() else []
    points, last_multiple = [Point("fresh", 0)], 0
    for name in checkpoint_names(folder):
        batch = checkpoint_batch(Path(name))
        tokens = tokens_at(records, batch)
        if every:
            if tokens is None or tokens // every == last_multiple:
                continue
            last_multiple = tokens // every
        points.append(Point(f"step{batch:07d}-tokens{tokens if tokens is not None else 'unknown'}", tokens or 0,
                            name))
    return points


def checkpoint_path(folder: RunFolder, point: Point) -> Path:
    """The point's checkpoint here, verified against its manifest (fetched first from an object store); a
    CheckpointError names it and what is wrong."""
    if folder.remote is not None:
        return folder.fetch(point.checkpoint)
    path = folder.path / point.checkpoint
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    return path
