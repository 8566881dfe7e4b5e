"""One writer per folder: one training run per save folder, one prep per output folder.

Two runs writing one folder interleave their metrics and overwrite each other's config and checkpoints (two preps
race on the same unit folders), so `bertforge train` takes ``save_folder/run.lock`` and `bertforge prep` takes
``out_dir/prep.lock`` before they write anything. The lock holds the holder's pid, host,
process start time and Slurm job id. A lock left behind by a process that is gone (same host, pid dead or reused)
is taken over, and so is one left by an earlier attempt of the same Slurm job (a requeue keeps the job id but may
run on another host). Anything else is refused with the holder named.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from bertforge.errors import ConfigError


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (to tell a reused pid apart), or None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start_time": _start_time(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _is_stale(holder: dict) -> bool:
    me = _holder()
    if holder.get("slurm_job_id") and holder["slurm_job_id"] == me["slurm_job_id"]:
        return True  # an earlier attempt of this very job, requeued
    if holder.get("host") != me["host"]:
        return False  # cannot see another host's processes
    return _start_time(int(holder.get("pid", -1))) != holder.get("start_time")


def _read_holder(lock: Path) -> dict:
    """The holder written in the lock; {} if it stays unreadable (a taker killed between creating and writing
    it) for a moment longer than any taker needs to write it."""
    for _ in range(10):
        try:
            return json.loads(lock.read_text())
        except (OSError, ValueError):
            time.sleep(0.1)
    return {}


def acquire_lock(lock: Path, command: str) -> None:
    """Take the lock or raise a ConfigError naming who holds it (another ``command``) and what to do."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    mine = json.dumps(_holder())
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_holder(lock)
            if holder and not _is_stale(holder):
                raise ConfigError(f"'{lock.parent}' is in use by another {command} (pid {holder.get('pid')} on "
                                  f"{holder.get('host')}, since {holder.get('since')}); wait for it, stop it, or "
                                  f"write to another folder. If that process is gone, delete {lock}") from None
            lock.unlink(missing_ok=True)  # stale (or unreadable, as a kill while writing it leaves it): take over
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(mine)
        return
    raise ConfigError(f"could not take {lock}: another run took it at the same moment; try again")


def release_lock(lock: Path) -> None:
    """Remove the lock if this process holds it."""
    try:
        if json.loads(lock.read_text()).get("pid") == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass
