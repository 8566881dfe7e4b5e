"""One run at a time registers a StreamingDataset's shared memory on a machine.

Every StreamingDataset claims a numbered prefix for its shared memory (/dev/shm): each rank scans for the lowest
free number, the ranks meet at a barrier, and then the node's local leader creates the block under that number.
Two runs starting together on one machine (two single-GPU jobs on one node, two test workers) can both scan the
same free number; whichever leader creates second crashes with FileExistsError, and the longer the barrier waits
for a slow rank, the likelier that is. Here each node's local leader holds an exclusive lock on a file beside the
shared memory while its run registers, and every rank waits at a barrier until its leader holds it, so no other
run scans or creates in between. The lock lives in /dev/shm, so its scope is exactly the shared memory's: a
container or a node with its own /dev/shm has its own lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

WAIT_S = 300.0
"""How long a leader waits for another run's registration before going on without the lock (with a warning):
registering takes well under a second, so a lock held longer belongs to a run stuck in its barrier."""


def lock_path() -> Path:
    """The lock file: in /dev/shm where there is one, else the temporary folder."""
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())) / "bertforge-streaming.lock"


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextlib.contextmanager
def registration_lock() -> Iterator[None]:
    """Hold the machine's registration lock (local leader) around the construction of a StreamingDataset, which
    every rank of the run must enter, as streaming's own barriers already require."""
    leader = int(os.environ.get("LOCAL_RANK", "0")) == 0
    handle = None
    if leader:
        handle = open(lock_path(), "a+")  # held across the yield, closed in the finally
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    print(f"warning: {lock_path()} held for over {WAIT_S:.0f} s by another run; registering the "
                          f"dataset's shared memory without it", flush=True)
                    handle.close()
                    handle = None
                    break
                time.sleep(0.05)
    try:
        _barrier()  # no rank scans for a prefix before its leader holds the lock
        yield
        _barrier()  # the leader has created its block before the lock goes
    finally:
        if handle is not None:
            handle.close()  # releases the flock
