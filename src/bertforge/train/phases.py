"""Phases that chain: a run config names the phase it follows, and starts from that phase's final checkpoint.

A phase file says what changes (sequence length, RoPE theta, LR and schedule, batch, mask rate, mixture); the
link is ``phase.after``, the predecessor's run config. The predecessor's ``save_folder`` says where its final
checkpoint is, so nothing has to be copied by hand between phases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bertforge.schema import ConfigError


@dataclass
class PhaseConfig:
    after: str | None = None
    """Run config of the phase this one follows (relative to this file); start from its final checkpoint."""
    load: Literal["weights", "weights_and_optimizer"] = "weights"
    """What to take from the predecessor: its weights, or its weights and optimizer state (the token clock,
    schedule and data position always start afresh)."""


def predecessor_path(after: str, source: Path) -> Path:
    path = (source.parent / after) if not Path(after).is_absolute() else Path(after)
    if not path.is_file():
        raise ConfigError(f"{source}: phase.after names '{after}', but {path} does not exist")
    return path


def final_checkpoint(save_folder: str | Path) -> Path:
    """The checkpoint a finished phase ended with (Composer's ``latest`` link, followed)."""
    latest = Path(save_folder) / "latest-rank0.pt"
    if not latest.exists():
        raise ConfigError(f"the previous phase has no checkpoint in '{save_folder}' (no latest-rank0.pt); run it "
                          f"first, or set checkpoint.load_path yourself")
    return latest.resolve()


def load_chain(path: str | Path, overrides: list[str] | None = None) -> list[tuple[Path, object]]:
    """The phase at ``path`` and all its predecessors, first phase first, as (file, TrainConfig)."""
    from bertforge.train.config import load_train_config

    chain, seen = [], []
    current: Path | None = Path(path)
    while current is not None:
        if current.resolve() in seen:
            raise ConfigError(f"{current}: phase.after makes a cycle ({' -> '.join(map(str, seen))})")
        seen.append(current.resolve())
        config = load_train_config(current, overrides if not chain else None)
        chain.append((current, config))
        current = predecessor_path(config.phase.after, current) if config.phase.after else None
    return chain[::-1]


# What a new phase does not take over even with the optimizer: its own clock (and so its LR), data position,
# batch-warmup position and RNG start afresh.
FRESH_STATE_KEYS = ["state/timestamp", "state/callbacks/*", "state/schedulers", "state/dataset_state", "rng"]


def start_after_predecessor(config) -> dict:
    """Point the run at its predecessor's final checkpoint; return the lineage to record ({} for a first phase).

    Returns the predecessor config file, the checkpoint, and the tokens the earlier phases trained on.
    """
    if not config.phase.after:
        return {}
    chain = load_chain(config.phase.after)
    previous = chain[-1][1]
    checkpoint = final_checkpoint(previous.save_folder)
    config.checkpoint.load_path = str(checkpoint)
    config.checkpoint.load_weights_only = config.phase.load == "weights"
    tokens = [c.total_tokens for _, c in chain]
    return {"after": config.phase.after, "checkpoint": str(checkpoint), "phases": [c.run_name for _, c in chain],
            "tokens_before": sum(tokens) if None not in tokens else None}
