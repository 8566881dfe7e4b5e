"""Phases that chain: a run config names the phase it follows, and starts from that phase's final checkpoint.

A phase file says what changes (sequence length, RoPE theta, LR and schedule, batch, mask rate, mixture); the
link is ``phase.after``, the predecessor's run config. The predecessor's ``save_folder`` says where its final
checkpoint is, so nothing has to be copied by hand between phases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bertforge.checkpoint.run_folder import open_run_folder
from bertforge.errors import ConfigError
from bertforge.train.config import TrainConfig, load_train_config, predecessor_path


def load_chain(path: str | Path, overrides: list[str] | None = None) -> list[tuple[Path, TrainConfig]]:
    """The phase at ``path`` and all its predecessors, first phase first, as (file, TrainConfig)."""
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


@dataclass
class StartingPoint:
    """What a run loads before its first step."""

    load_path: str | None = None
    """A checkpoint to load: the run's own newest verified one (a restart), the predecessor's final one, or
    ``checkpoint.load_path``; None for a fresh start."""
    weights_only: bool = False
    """Take only the model weights from it."""
    ignore_keys: list[str] | None = None
    """Checkpoint state to leave out (a new phase's clock, data position and RNG)."""
    lineage: dict = field(default_factory=dict)
    """Where the weights came from, recorded in every checkpoint and the W&B config."""


def starting_point(config: TrainConfig, resume: Path | None = None) -> StartingPoint:
    """Where ``config`` starts: from its own checkpoint ``resume`` (a restart), else after its predecessor phase,
    from ``checkpoint.load_path``, or fresh.

    For a phase, the lineage holds the predecessor config file, its final checkpoint, the phases of the chain and
    the tokens they trained on; ``init_from`` is recorded too. A restart keeps the lineage of its first start.
    """
    lineage = {"init_from": config.init_from} if config.init_from else {}
    if resume is not None:
        first = starting_point(config)
        return StartingPoint(str(resume), False, None, first.lineage)
    if not config.phase.after:
        return StartingPoint(config.checkpoint.load_path, config.checkpoint.load_weights_only, lineage=lineage)
    chain = load_chain(config.phase.after)
    before = chain[-1][1]
    checkpoint = open_run_folder(before.save_folder, before.staging_folder).final_checkpoint()
    tokens = [c.total_tokens for _, c in chain]
    lineage = {"after": config.phase.after, "checkpoint": str(checkpoint), "phases": [c.run_name for _, c in chain],
               "tokens_before": sum(tokens) if None not in tokens else None} | lineage
    weights_only = config.phase.load == "weights"
    return StartingPoint(str(checkpoint), weights_only, None if weights_only else FRESH_STATE_KEYS, lineage)
