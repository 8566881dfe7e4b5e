"""Where bertforge's own files live, so preset names resolve without the user typing repository paths."""

from __future__ import annotations

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
