"""The layout of a run's ``save_folder``: every file name the trainer, export, plan, W&B and Slurm use, in one place.

    save_folder/
      config.yaml          the resolved run config of its first start
      streams.json         the identity (index hash) of each stream's dataset at its first start
      config_changes.jsonl the changes a restart made that are safe mid-run (LR, eval...), one line per restart
      metrics.jsonl        one JSON object per logged step
      curves.png           loss and LR against tokens
      wandb_run_id         the W&B run id, reused by restarts
      run.lock             who is training in this folder (pid, host, Slurm job), while they do
      ep0-ba800-rank0.pt   Composer checkpoints (an FSDP2 sharded one is a directory ep0-ba800/)
      ep0-ba800-rank0.pt.manifest.json   its size and SHA-256 per file, written once it is complete
      latest-rank0.pt      Composer's link to its newest checkpoint (bertforge itself lists and verifies)
      incomplete/          checkpoints that do not verify, or that a rollback superseded, kept aside
      slurm/               the rendered sbatch script and the job's log

A save_folder in an object store (``s3://...``) is mirrored: the run works in a local staging folder of the same
layout, and each checkpoint is uploaded once complete, its manifest last, so a checkpoint is complete in the store
exactly when its manifest is there; metrics.jsonl, config.yaml, curves.png and wandb_run_id follow. Before a
restart ``pull`` makes the staging folder the store's copy (the newest complete checkpoint brought back, local
checkpoints the store does not hold complete set aside), and the next phase or an export fetch the newest
complete checkpoint without touching anything else.

Imports no torch at module level; reading a checkpoint loads it when called.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from bertforge.checkpoint.manifest import MANIFEST_SUFFIX, manifest_path, verify_checkpoint
from bertforge.checkpoint.safe_load import check_sharded_checkpoint, load_checkpoint_file
from bertforge.errors import CheckpointError, ConfigError, DataError
from bertforge.paths import keyed_folder
from bertforge.store import RemoteFolder, is_remote

CHECKPOINT_FILENAME = "ep{epoch}-ba{batch}-rank{rank}.pt"
"""Composer's ``save_filename``: a monolithic checkpoint; FSDP2 sharded checkpoints drop the '-rank' part and the
'.pt' and become a directory."""
LATEST_FILENAME = "latest-rank{rank}.pt"
"""Composer's ``save_latest_filename``: re-pointed at each checkpoint once it is complete."""
_CHECKPOINT_NAME = re.compile(r"^ep\d+-ba(\d+)")


def checkpoint_batch(path: Path) -> int:
    """The batch a checkpoint was saved at, from its name (ep<E>-ba<B>-...)."""
    return int(_CHECKPOINT_NAME.match(path.name).group(1))


def _entry(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"save_folder/{name}")


def read_metric_records(path: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order. A last line cut in the middle (a crash or a full disk while
    it was written: the known result) is left out with a note; any other line that does not parse is an error
    naming the file and the line, since the rest could not be trusted."""
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                print(f"note: {path}: its last line is cut off (the run was stopped while writing it); read without "
                      f"it", flush=True)
                continue
            raise DataError(f"{path}, line {number}: not JSON ({err.msg}); the file was changed by hand or damaged: "
                            f"delete that line to read the rest") from None
    return records


def open_run_folder(save_folder: str, staging_folder: str | None = None) -> RunFolder:
    """A run's folder: ``save_folder`` itself, or for one in an object store, a local staging folder mirrored to
    it (``staging_folder``, default one per URL under the system's temporary folder)."""
    if not is_remote(save_folder):
        return RunFolder(save_folder)
    staging = staging_folder or keyed_folder(save_folder.rstrip("/"), None, "bertforge-runs")
    return RunFolder(staging, remote=save_folder)


class RunFolder:
    """A run's save folder; its properties are the paths of what lies in it. With ``remote``, the local folder is
    the staging copy of that object-store folder."""

    def __init__(self, path: str | Path, remote: str | None = None):
        self.path = Path(path)
        self.remote = RemoteFolder(remote) if remote else None

    @property
    def location(self) -> str:
        """Where the run's files are kept, as a user would name it: the URL of a mirrored folder."""
        return self.remote.uri if self.remote else str(self.path)

    config = _entry("config.yaml")
    streams = _entry("streams.json")
    config_changes = _entry("config_changes.jsonl")
    metrics = _entry("metrics.jsonl")
    curves = _entry("curves.png")
    wandb_run_id = _entry("wandb_run_id")
    incomplete = _entry("incomplete")
    slurm = _entry("slurm")
    lock = _entry("run.lock")

    def checkpoints(self, at_most_batch: int | None = None) -> list[Path]:
        """Every checkpoint in the folder (files and sharded directories, complete or not), newest first, found by
        listing the folder rather than trusting the ``latest`` link; only those up to a batch, if given."""
        found = []
        for path in self.path.iterdir() if self.path.is_dir() else []:
            match = _CHECKPOINT_NAME.match(path.name)
            if match and not path.name.endswith(MANIFEST_SUFFIX):
                if at_most_batch is None or int(match.group(1)) <= at_most_batch:
                    found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found, reverse=True)]

    def valid_checkpoints(self, report: bool = True, at_most_batch: int | None = None) -> Iterator[Path]:
        """The checkpoints (up to a batch, if given) whose manifest verifies, newest first, each verified as it is
        reached; with ``report``, each one passed over is named with the reason."""
        for path in self.checkpoints(at_most_batch):
            problem = verify_checkpoint(path)
            if problem is None:
                yield path
            elif report:
                print(f"passing over checkpoint {path}: {problem}", flush=True)

    def newest_valid_checkpoint(self, report: bool = True, at_most_batch: int | None = None) -> Path | None:
        """The newest checkpoint (up to a batch, if given) whose manifest verifies."""
        return next(self.valid_checkpoints(report, at_most_batch), None)

    def final_checkpoint(self) -> Path:
        """The checkpoint a finished run (a previous phase) ended with: its newest checkpoint that verifies (for a
        folder in an object store, its newest complete one there, fetched; nothing else here is touched)."""
        if self.remote is not None:
            complete = self.stored_checkpoints()
            found = self.fetch(complete[0]) if complete else None
        else:
            found = self.newest_valid_checkpoint()
        if found is None:
            raise ConfigError(f"the previous phase has no complete checkpoint in '{self.location}'; run it first, "
                              f"or set checkpoint.load_path yourself")
        return found

    def resume_point(self) -> Path | None:
        """The checkpoint a restarted run resumes from: the newest that verifies. Checkpoints newer than it (a save
        cut off by a crash, a truncated or corrupted file) are moved into ``incomplete/``, not deleted, so they
        neither block the new saves nor get lost. Starts afresh when the only checkpoint is a first save cut off
        before its manifest; refuses to start afresh over any other checkpoints none of which verify."""
        resume = self.newest_valid_checkpoint()
        listed = self.checkpoints()
        if resume is None and len(listed) == 1 and not manifest_path(listed[0]).exists():
            # The saver seals a checkpoint before it rotates older ones out, so a lone unsealed checkpoint is the
            # run's first save, cut off by a crash: there is nothing to resume, and it is kept aside, not lost.
            self._set_aside(listed[0], "the run's first save, cut off before it was sealed")
            return None
        if resume is None and listed:
            raise CheckpointError(f"save_folder '{self.path}' holds checkpoints but none verifies (see above); "
                                  f"starting afresh would lose them. Move them away to start over, or set "
                                  f"checkpoint.load_path to one you trust")
        self.set_aside_newer_than(resume, "which does not verify")
        return resume

    def set_aside_newer_than(self, checkpoint: Path | None, why: str) -> None:
        """Move every checkpoint newer than ``checkpoint`` (all, when None) and its manifest into ``incomplete/``,
        numbered where the name is taken there, and say so with ``why``."""
        listed = self.checkpoints()
        for path in listed[: listed.index(checkpoint)] if checkpoint else listed:
            self._set_aside(path, why)

    def set_aside_metrics(self) -> None:
        """Before a fresh start: move a metrics.jsonl left by an earlier attempt (one killed before it sealed a
        checkpoint, or run with autoresume off) into ``incomplete/``, so the new record starts at its batch 1."""
        if self.metrics.is_file():
            target = self.incomplete / self._free_name(self.metrics.name)
            self.metrics.rename(target)
            print(f"moved the metrics.jsonl of an earlier start to {target}", flush=True)

    def _free_name(self, name: str) -> str:
        """``name``, or ``name.N`` where that is taken in ``incomplete/`` (made here)."""
        self.incomplete.mkdir(exist_ok=True)
        return next(free for free in (f"{name}.{n}" if n else name for n in range(1000))
                    if not (self.incomplete / free).exists())

    def _set_aside(self, checkpoint: Path, why: str) -> None:
        suffix = self._free_name(checkpoint.name).removeprefix(checkpoint.name)
        for item in (checkpoint, manifest_path(checkpoint)):
            if item.exists():
                item.rename(self.incomplete / f"{item.name}{suffix}")
        print(f"moved {checkpoint.name}, {why}, to {self.incomplete}", flush=True)
        self.forget([checkpoint.name])  # nor may a restart take it from the store


    # -- the object-store mirror (each a no-op for a local save_folder) ----------------------------------------

    _FILES = ("config.yaml", "streams.json", "config_changes.jsonl", "metrics.jsonl", "curves.png", "wandb_run_id")

    def push_checkpoint(self, checkpoint: Path) -> None:
        """Upload a complete checkpoint: its files, the run's record (so that the store's metrics.jsonl reaches at
        least as far as its newest complete checkpoint), then its manifest."""
        if self.remote is None:
            return
        if checkpoint.is_dir():
            self.remote.upload_tree(checkpoint, checkpoint.name)
        else:
            self.remote.upload(checkpoint, checkpoint.name)
        self.push_files()
        self.remote.upload(manifest_path(checkpoint), manifest_path(checkpoint).name)

    def push_files(self) -> None:
        """Upload the run's record (config, metrics, curves, W&B id) as it now is."""
        if self.remote is None:
            return
        for name in self._FILES:
            if (self.path / name).is_file():
                self.remote.upload(self.path / name, name)

    def forget(self, checkpoint_names: list[str]) -> None:
        """Delete rotated-out checkpoints from the store: the manifest first, so none is ever complete and partial."""
        if self.remote is None or not checkpoint_names:
            return
        stored = self.remote.sizes()
        for name in checkpoint_names:
            self.remote.delete([name + MANIFEST_SUFFIX])
            self.remote.delete([key for key in stored if key == name or key.startswith(name + "/")])

    def pull(self) -> None:
        """Before a restart (by the run itself, holding its lock): make the staging folder the store's copy. The
        run's record is taken from the store; a local checkpoint that is not complete in the store (an upload cut
        off, or a staging folder left from another run) is set aside; the newest complete stored checkpoint is
        downloaded (files first, manifest last) unless the same one is here."""
        if self.remote is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        stored = self.remote.sizes()
        for name in self._FILES:
            if name in stored:
                self.remote.download(name, self.path / name)
            else:
                (self.path / name).unlink(missing_ok=True)
        complete = _complete_checkpoints(stored)
        for local in self.checkpoints():
            if local.name not in complete:
                self._set_aside(local, f"which is not complete in {self.remote}")
        if complete:
            self.fetch(complete[0], stored)

    def stored_checkpoints(self) -> list[str]:
        """The names of the checkpoints complete in the object store, newest first."""
        return _complete_checkpoints(self.remote.sizes())

    def fetch(self, name: str, stored: dict[str, int] | None = None) -> Path:
        """The stored checkpoint ``name`` in the staging folder (downloaded, files first and manifest last, unless
        the same checkpoint, by its manifest, is here already), verified against its manifest."""
        local = self.path / name
        stored = self.remote.sizes() if stored is None else stored
        if name + MANIFEST_SUFFIX not in stored:
            raise CheckpointError(f"{self.remote}/{name} is not a complete checkpoint (no {MANIFEST_SUFFIX} beside "
                                  f"it: its upload did not finish); pick another one")
        manifest = manifest_path(local)
        if manifest.is_file() and manifest.read_text() == self.remote.read_text(manifest.name) \
                and verify_checkpoint(local) is None:
            return local
        for key in sorted(stored):
            if key == name or key.startswith(name + "/"):
                self.remote.download(key, self.path / key)
        self.remote.download(name + MANIFEST_SUFFIX, manifest_path(local))
        print(f"downloaded {name} from {self.remote}", flush=True)
        problem = verify_checkpoint(local)
        if problem is not None:
            raise CheckpointError(f"{self.remote}/{name}, downloaded to {local}: {problem}")
        return local


def _complete_checkpoints(stored: dict[str, int]) -> list[str]:
    """The checkpoints complete in a store listing (their manifest is there), newest first."""
    names = [key.removesuffix(MANIFEST_SUFFIX) for key in stored
             if key.endswith(MANIFEST_SUFFIX) and "/" not in key and _CHECKPOINT_NAME.match(key)]
    return sorted(names, key=lambda name: int(_CHECKPOINT_NAME.match(name).group(1)), reverse=True)


def fetch_checkpoint(url: str) -> Path:
    """A checkpoint in an object store, downloaded and verified: ``url`` names the checkpoint, or a save_folder
    (then its newest complete checkpoint)."""
    parent, _, name = url.rstrip("/").rpartition("/")
    if _CHECKPOINT_NAME.match(name) and not name.endswith(MANIFEST_SUFFIX):
        return open_run_folder(parent).fetch(name)
    return open_run_folder(url).final_checkpoint()


def read_checkpoint_state(path: Path) -> dict:
    """The ``state`` of a monolithic checkpoint, or the model and RunState parts of a sharded (DCP) one, read
    in this one process without the optimizer state (no process group needed). Every pickle in it is checked
    by the restricted unpickler first, so a crafted file raises instead of running code."""
    if not path.is_dir():
        return load_checkpoint_file(path)["state"]
    from torch.distributed.checkpoint import FileSystemReader  # noqa: PLC0415 (torch-free: plan, slurm and preflight import this)
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys  # noqa: PLC0415 (torch-free: plan, slurm and preflight import this)

    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path}: a folder that is neither a HuggingFace model (no config.json) nor a sharded "
                              f"checkpoint (no .metadata); give a model directory or a checkpoint")
    check_sharded_checkpoint(path)
    reader = FileSystemReader(str(path))
    keys = {key for key in reader.read_metadata().state_dict_metadata
            if key.startswith(("state.model.", "state.callbacks.RunState.model_config"))}
    return _load_state_dict_from_keys(keys, storage_reader=reader)["state"]
