"""Where a prepared dataset came from: the tokenizer that made its ids, its row length, its inputs, our version.

Token ids mean nothing without the tokenizer that made them: shards made with tokenizer A and read with tokenizer
B train without an error on what is, to the model, noise (or fail deep in the embedding when an id is too large).
So prep records the tokenizer's fingerprint and the row length in every unit (``unit.json``) and source
(``stats.json``), refuses to reuse a unit made differently, and every run compares each stream's record with its
``data.tokenizer`` before it starts. Standard library and ``tokenizers`` only (no torch), like the preflight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from bertforge import __version__
from bertforge.data.recipe import PrepRecipe
from bertforge.data.tokenizer import load_tokenizer, read_tokenizer_json, tokenizer_size_and_specials
from bertforge.errors import ConfigError
from bertforge.store import RemoteFolder, is_remote

# The parts of a tokenizer.json that decide which ids a text becomes; formatting, padding and truncation settings
# (which transformers rewrites when it saves a tokenizer again) are left out.
_DECIDING = ("normalizer", "pre_tokenizer", "model", "added_tokens")


def tokenizer_fingerprint(name_or_path: str) -> str:
    """A short hash of what maps text to ids, and of the special ids: equal for a tokenizer saved again."""
    path = Path(name_or_path) / "tokenizer.json"
    if path.is_file():
        spec = read_tokenizer_json(path)
    else:
        spec = json.loads(load_tokenizer(name_or_path).backend_tokenizer.to_str())
    size, ids = tokenizer_size_and_specials(name_or_path)
    deciding = {key: spec.get(key) for key in _DECIDING}
    deciding["added_tokens"] = sorted((t["id"], t["content"]) for t in spec.get("added_tokens") or [])
    deciding["specials"] = [size, ids.cls, ids.sep, ids.pad, ids.mask]
    return hashlib.sha256(json.dumps(deciding, sort_keys=True).encode()).hexdigest()[:16]


def unit_provenance(recipe: PrepRecipe, fingerprint: str, holdout: float = 0.0) -> dict:
    """What a unit's shards depend on besides its input files (those are the unit's own fingerprint): the
    tokenizer, the row length and the share of documents held out (recorded only when there is one)."""
    return {"tokenizer_fingerprint": fingerprint, "max_seq_len": recipe.max_seq_len} | (
        {"holdout": holdout} if holdout > 0 else {})


def source_provenance(recipe: PrepRecipe, source: str, fingerprint: str, vocab_size: int) -> dict:
    """The record a source's stats.json carries."""
    inputs = next(s.inputs for s in recipe.sources if s.name == source)
    return {"tokenizer": recipe.tokenizer, "tokenizer_fingerprint": fingerprint, "vocab_size": vocab_size,
            "max_seq_len": recipe.max_seq_len, "inputs": [dataclasses.asdict(i) for i in inputs],
            "bertforge_version": __version__}


def check_stream(name: str, local: str, tokenizer: str, fingerprint: str) -> None:
    """Refuse a prepared stream whose ids were made by another tokenizer than ``tokenizer``.

    A dataset that bertforge did not prepare (no stats.json) carries no record and is taken as it is.
    """
    stats_path = Path(local) / "stats.json"
    if not stats_path.is_file():
        return
    try:
        recorded = json.loads(stats_path.read_text()).get("provenance")
    except json.JSONDecodeError as err:
        raise ConfigError(f"{stats_path}: not valid JSON ({err}); re-run `bertforge prep` for stream '{name}'") from None
    if recorded is None:
        raise ConfigError(f"data.streams.{name}: {stats_path} does not say which tokenizer made its ids (prepared by "
                          f"an earlier bertforge); re-run `bertforge prep RECIPE --force` for it")
    if recorded["tokenizer_fingerprint"] != fingerprint:
        raise ConfigError(f"data.streams.{name}: {local} was prepared with tokenizer '{recorded['tokenizer']}' "
                          f"(fingerprint {recorded['tokenizer_fingerprint']}), but data.tokenizer '{tokenizer}' "
                          f"differs (fingerprint {fingerprint}); set data.tokenizer to the one the data was made "
                          f"with, or prepare the data again with this tokenizer")


def recorded_tokenizer(dataset: str) -> str | None:
    """The tokenizer a prepared dataset (a folder, or a URL in an object store) records in its stats.json, or None
    when it records none."""
    if is_remote(dataset):
        text = RemoteFolder(dataset).read_text("stats.json")
    else:
        stats = Path(dataset) / "stats.json"
        text = stats.read_text() if stats.is_file() else None
    recorded = json.loads(text).get("provenance") if text else None
    return recorded["tokenizer"] if recorded else None
