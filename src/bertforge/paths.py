"""Where bertforge's own files live, so preset names resolve without the user typing repository paths; and where
its local working copies go (caches, staging folders)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
YAMLS_DIR = REPO_ROOT / "yamls"


def resolve_yaml(name_or_path: str | Path, kind: str) -> Path:
    """A path as given if it exists, else the shipped preset ``yamls/{kind}/{name}.yaml``."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = YAMLS_DIR / kind / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    shipped = sorted(p.stem for p in (YAMLS_DIR / kind).glob("*.yaml"))
    raise FileNotFoundError(
        f"no file '{name_or_path}' and no {kind} preset of that name; presets: {', '.join(shipped) or 'none found'}"
        f" (looked in {YAMLS_DIR / kind}; bertforge must be installed from a checkout with `pip install -e .`)"
    )


def keyed_folder(key: str, root: str | Path | None, default_root: str) -> Path:
    """One folder per ``key`` (a URL, or a resolved path) under ``root``, or, when it is None, under
    ``<system temp>/<default_root>``: a stable local home for a remote dataset's cache or a store folder's staging
    copy, found again by the next command that names the same key."""
    base = Path(root) if root else Path(tempfile.gettempdir()) / default_root
    return base / hashlib.sha256(key.encode()).hexdigest()[:16]
