"""Checkpoints that can be trusted to be whole: a checksum manifest written once a checkpoint is complete.

A manifest (``<checkpoint>.manifest.json``) lists every file of a checkpoint with its size and SHA-256; it is
written after the checkpoint, so a checkpoint without one was cut off while saving. ``verify_checkpoint`` says what
is wrong with a checkpoint (missing manifest, a missing, truncated or altered file) or None when it is whole.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from bertforge.atomic import write_text_atomic

MANIFEST_SUFFIX = ".manifest.json"


def manifest_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name + MANIFEST_SUFFIX)


def _files(checkpoint: Path) -> list[Path]:
    return sorted(p for p in checkpoint.rglob("*") if p.is_file()) if checkpoint.is_dir() else [checkpoint]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(checkpoint: Path) -> Path:
    """Record the size and checksum of every file of a complete checkpoint (a file, or a sharded directory)."""
    files = {(p.relative_to(checkpoint).as_posix() if checkpoint.is_dir() else p.name):
             {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(checkpoint)}
    target = manifest_path(checkpoint)
    write_text_atomic(target, json.dumps({"checkpoint": checkpoint.name, "files": files}, indent=1))
    return target


def verify_checkpoint(checkpoint: Path) -> str | None:
    """None if the checkpoint is whole; else why not, in words a user can act on."""
    manifest = manifest_path(checkpoint)
    if not manifest.is_file():
        return "no checksum manifest: the save did not finish"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return f"its manifest {manifest.name} is unreadable"
    for name, expected in files.items():
        path = checkpoint / name if checkpoint.is_dir() else checkpoint
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} is {size} bytes, the manifest says {expected['bytes']} (truncated or rewritten)"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum (corrupted)"
    return None
