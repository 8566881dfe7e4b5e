"""The training run config: every YAML key of `bertforge train`, with its default and meaning.

A run file may pull in other YAML files with ``includes:``, a mapping from a config key to a file
(``model: models/tiny.yaml``; the key ``.`` merges a file at the top level). Paths are relative to the including
file, else to ``yamls/``. The run file's own keys, then command-line ``key=value`` overrides, win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bertforge.data.loader import DataConfig
from bertforge.model.config import ModernBertConfig
from bertforge.paths import YAMLS_DIR
from bertforge.schema import ConfigError, build
from bertforge.train.optim import OptimizerConfig
from bertforge.train.schedules import ScheduleConfig


@dataclass
class CheckpointConfig:
    interval: str = "1000ba"
    """How often to save: Composer time ('500ba' batches, '100000000tok' tokens); always also at the end."""
    keep: int = 3
    """Keep the last K checkpoints (-1: all)."""
    autoresume: bool = True
    """Resume from the latest checkpoint in save_folder if there is one (crash or requeue)."""
    load_path: str | None = None
    """Start from this checkpoint instead (a new phase); ignored when autoresume finds one."""
    load_weights_only: bool = False
    """With load_path: take the weights only, with a fresh optimizer, schedule and token clock."""


@dataclass
class TrainConfig:
    run_name: str
    """Name of the run (the default checkpoint folder name)."""
    model: ModernBertConfig
    """The architecture (usually included from yamls/models/)."""
    data: DataConfig
    """The packed MLM loader; its micro_batch_size is set from global_batch_size and the number of ranks."""
    save_folder: str = ""
    """Checkpoints, metrics.jsonl and the loss curve go here; empty means runs/<run_name>."""
    max_duration: str = "10000000tok"
    """Length of the run in Composer time; 'tok' counts real (non-padding) tokens."""
    global_batch_size: int = 8
    """Packed rows of data.max_seq_len per optimizer step, over all ranks."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """The optimizer."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """The learning-rate schedule, in tokens."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving, resuming, and starting from another run."""
    precision: Literal["auto", "fp32", "amp_bf16"] = "auto"
    """amp_bf16 on GPU and fp32 on CPU when 'auto'."""
    parallelism: Literal["ddp", "fsdp2"] = "ddp"
    """ddp (plain data parallel, or one process) or fsdp2 (sharded, through Composer's FSDP2)."""
    activation_checkpointing: bool = False
    """Recompute layer activations in the backward pass (FSDP2) to save memory."""
    compile: bool = False
    """torch.compile the model."""
    seed: int = 17
    """Seed of initialisation, data order and masking."""
    log_interval: int = 1
    """Write metrics every N batches."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU; None looks the GPU up in a table (no MFU on CPU)."""
    export_dir: str | None = None
    """Export the final model (and tokenizer) as a HuggingFace directory here."""

    def __post_init__(self) -> None:
        self.save_folder = self.save_folder or f"runs/{self.run_name}"
        if self.global_batch_size <= 0:
            raise ConfigError(f"'global_batch_size' must be positive, got {self.global_batch_size}")
        if not self.max_duration.endswith(("tok", "ba", "ep", "sp")):
            raise ConfigError(f"'max_duration' must be a Composer time like '1000000tok' or '100ba', "
                              f"got {self.max_duration!r}")

    def check_world(self, world_size: int) -> None:
        """Combinations that only make sense once the number of ranks is known; before any model is built."""
        if self.global_batch_size % world_size:
            raise ConfigError(f"'global_batch_size' ({self.global_batch_size}) must be divisible by the number of "
                              f"ranks ({world_size}); use a multiple of {world_size}")


def _load_with_includes(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    from omegaconf import OmegaConf

    if path in seen:
        raise ConfigError(f"{path}: includes itself (via {' -> '.join(map(str, seen))})")
    conf = OmegaConf.load(path)
    includes = conf.pop("includes", None) if "includes" in conf else None
    merged = OmegaConf.create()
    for key, target in (includes or {}).items():
        candidates = [path.parent / target, YAMLS_DIR / target]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{path}: includes.{key} names '{target}', found neither "
                              f"{candidates[0]} nor {candidates[1]}")
        sub = _load_with_includes(found, seen + (path,))
        merged = OmegaConf.merge(merged, sub if key == "." else OmegaConf.create({key: sub}))
    return OmegaConf.merge(merged, conf)


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    from omegaconf import OmegaConf

    from bertforge.data.recipe import register_resolvers

    register_resolvers()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no config file '{path}'")
    conf = OmegaConf.merge(_load_with_includes(path), OmegaConf.from_dotlist(list(overrides or [])))
    try:
        resolved = OmegaConf.to_container(conf, resolve=True)
    except Exception as err:  # an interpolation naming a missing key
        raise ConfigError(f"{path}: {err}") from None
    return build(TrainConfig, resolved, source=str(path))


def resolved_yaml(config: TrainConfig) -> str:
    import dataclasses

    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(config)))
