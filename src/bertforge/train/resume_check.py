"""A restart continues the run its checkpoint belongs to, or refuses.

A restart loads the optimizer, the token clock and the loader's exact position from its checkpoint; settings that
decide what those mean (the model, the tokenizer, the data mixture and the datasets behind it, the batch, the
seed) cannot change under them without making a different run that still calls itself this one. So before a
restart the new config is compared with the run's recorded one (``config.yaml``, written by the first start) and
the recorded identity of each stream's dataset (``streams.json``: a hash of its index.json). A change to any of
those is refused with the difference and the two ways on; a change that is safe mid-run (the LR and schedule,
eval, logging, checkpoint cadence, ``max_duration``: it moves the schedule's end as an LR change would) is allowed
and appended to ``config_changes.jsonl``, which the run's lineage carries into every later checkpoint and W&B;
``config.yaml`` keeps the first start's values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import yaml

from bertforge.atomic import write_text_atomic
from bertforge.checkpoint.run_folder import RunFolder
from bertforge.errors import ConfigError
from bertforge.train.config import TrainConfig, resolved_yaml

SAFE_CHANGES = ("run_name", "save_folder", "staging_folder", "max_duration", "optimizer.lr", "schedule.", "eval.",
                "log_interval", "wandb.", "checkpoint.interval", "checkpoint.keep", "checkpoint.load_path",
                "checkpoint.load_weights_only", "stability.", "peak_flops", "export_dir", "downstream", "compile",
                "init_from", "init_tile", "init_optimizer", "phase.", "data.num_workers", "data.cache_dir",
                "data.cache_limit", "data.download_retry", "data.download_timeout", "data.streams.")
"""Keys a restart may change. Streams are compared on their own (``_stream_changes``): their paths may move with
the dataset, their names, proportions and datasets may not."""


def dataset_identity(local: str | Path) -> str | None:
    """A short hash of a prepared dataset's index.json: its shards, their sizes, hashes and sample counts."""
    index = Path(local) / "index.json"
    return hashlib.sha256(index.read_bytes()).hexdigest()[:16] if index.is_file() else None


def record_run(config: TrainConfig, folder: RunFolder) -> None:
    """At a run's first start: its config and the identity of every stream's dataset, for later restarts."""
    write_text_atomic(folder.config, resolved_yaml(config))
    write_text_atomic(folder.streams, json.dumps(
        {name: dataset_identity(stream.local) for name, stream in config.data.streams.items()}, indent=1) + "\n")


def check_restart(config: TrainConfig, folder: RunFolder, checkpoint: Path) -> list[dict]:
    """Refuse a restart from ``checkpoint`` whose config changes the run; record and return the allowed changes
    (every restart's, oldest first) for the lineage."""
    if not folder.config.is_file():  # deleted, or never copied with the checkpoints: the rule cannot be applied
        raise ConfigError(f"{folder.location} holds checkpoints but no config.yaml, the record of the run's settings "
                          f"that a restart is checked against (a changed batch, mixture or model would otherwise "
                          f"resume silently); restore it from where the run started, or start a new phase from "
                          f"{checkpoint.name} in a new save folder (phase.after, or checkpoint.load_path with "
                          f"checkpoint.load_weights_only)")
    recorded = yaml.safe_load(folder.config.read_text()) or {}
    for entry in _recorded_changes(folder):  # the values the run continued with, after earlier restarts' changes
        for key, (_, value) in entry["changed"].items():
            *parents, leaf = key.split(".")
            node = recorded
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    new = yaml.safe_load(resolved_yaml(config))
    changed = _differences(recorded, new)
    refused = {key: pair for key, pair in changed.items() if not key.startswith(SAFE_CHANGES)}
    refused |= _stream_changes(recorded, config, folder)
    if refused:
        lines = "; ".join(f"{key}: {old!r} -> {value!r}" for key, (old, value) in sorted(refused.items()))
        raise ConfigError(
            f"{folder.location} holds run '{recorded.get('run_name')}' (checkpoint {checkpoint.name}), and this "
            f"config changes what its checkpoint continues: {lines}. Either restart with the recorded values "
            f"({folder.config}), or start a new phase from the checkpoint in a new save_folder (phase.after: "
            f"{folder.config}, or init_from / checkpoint.load_path)")
    allowed = {key: [old, value] for key, (old, value) in changed.items()}
    if allowed:
        with folder.config_changes.open("a") as out:
            out.write(json.dumps({"checkpoint": checkpoint.name, "changed": allowed}) + "\n")
    return _recorded_changes(folder)


def _recorded_changes(folder: RunFolder) -> list[dict]:
    if not folder.config_changes.is_file():
        return []
    return [json.loads(line) for line in folder.config_changes.read_text().splitlines() if line.strip()]


def _differences(old, new, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> (old, new) for every leaf that differs (a key missing on one side counts as None)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = {}
        for key in sorted(set(old) | set(new)):
            found |= _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return {} if old == new else {prefix.rstrip("."): (old, new)}


def _stream_changes(recorded: dict, config: TrainConfig, folder: RunFolder) -> dict[str, tuple]:
    """The streams' names, proportions and repeats as recorded, and each dataset the same by its index hash (a
    dataset moved to another path is the same dataset)."""
    old = (recorded.get("data") or {}).get("streams") or {}
    new = {name: dataclasses.asdict(stream) for name, stream in config.data.streams.items()}
    refused: dict[str, tuple] = {}
    if sorted(old) != sorted(new):
        return {"data.streams": (sorted(old), sorted(new))}
    identities = json.loads(folder.streams.read_text()) if folder.streams.is_file() else {}
    for name in new:
        for key in ("proportion", "repeat"):
            if old[name].get(key) != new[name][key]:
                refused[f"data.streams.{name}.{key}"] = (old[name].get(key), new[name][key])
        was, now = identities.get(name), dataset_identity(new[name]["local"])
        if was is not None and was != now:
            refused[f"data.streams.{name} (dataset {new[name]['local']})"] = (f"index {was}", f"index {now}")
        elif was is None and (old[name].get("local"), old[name].get("remote")) != (new[name]["local"],
                                                                                   new[name]["remote"]):
            refused[f"data.streams.{name}.local/remote"] = ((old[name].get("local"), old[name].get("remote")),
                                                             (new[name]["local"], new[name]["remote"]))
    return refused
