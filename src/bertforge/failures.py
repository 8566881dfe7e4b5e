"""What a user can cause or meet, said in one line: the path or service concerned and the fix. The CLI passes
every error through ``explain``; what it does not know is a bug and keeps its traceback.

Known classes: our own errors (a bad config, checkpoint or dataset), a path that cannot be read or written (missing,
read-only, below a file), a full disk (also torch's "unexpected pos" when a checkpoint write is cut off), a JSON
file that does not parse, and an object store that cannot be reached. Standard library only: the CLI imports it
before any command runs.
"""

from __future__ import annotations

import errno
import json

from bertforge.errors import CheckpointError, ConfigError, DataError


def disk_full(err: BaseException) -> bool:
    """A write that failed for want of space: the OSError, torch's zip writer's words for it, or safetensors' (its
    SafetensorError carries the OS's message, "I/O error: No space left on device (os error 28)", or in some of its
    releases "StorageFull")."""
    text = str(err)
    return (isinstance(err, OSError) and err.errno == errno.ENOSPC) or (
        isinstance(err, RuntimeError) and ("unexpected pos" in text or "PytorchStreamWriter failed" in text)) or (
        type(err).__name__ == "SafetensorError" and ("os error 28" in text or "StorageFull" in text))


def explain(err: BaseException) -> str | None:
    """One line for a known failure, or None for a bug."""
    if isinstance(err, (ConfigError, CheckpointError, DataError, FileNotFoundError)):
        return str(err)
    if disk_full(err):
        where = getattr(err, "filename", None) or "the disk being written"
        return (f"no space left on {where}: free space there and run the same command (a checkpoint cut off by it "
                f"is set aside when the run restarts)")
    if isinstance(err, OSError) and err.filename:
        fix = {PermissionError: "choose a folder you can write, or change its permissions",
               NotADirectoryError: "a part of the path is a file, not a folder; choose another path",
               IsADirectoryError: "it is a folder where a file is expected; choose a file path",
               FileExistsError: "it is in the way; move it or choose another path"}.get(type(err), "check the path")
        return f"{err.filename}: {err.strerror}; {fix}"
    if isinstance(err, json.JSONDecodeError):
        return f"a JSON file does not parse ({err}); restore it or make it again"
    if type(err).__module__.startswith(("botocore", "boto3", "s3transfer")):
        return (f"the object store could not be used ({type(err).__name__}: {err}); check the URL, "
                f"S3_ENDPOINT_URL, your network and credentials")
    return None
