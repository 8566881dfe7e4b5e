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
from bertforge.train.phases import PhaseConfig, predecessor_path
from bertforge.train.schedules import ScheduleConfig
from bertforge.train.steps import BatchWarmupConfig
from bertforge.train.wandb_logging import WandbConfig


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
    state_dict_type: Literal["sharded", "full"] = "sharded"
    """fsdp2 only: 'sharded' writes a directory of per-rank shards (torch.distributed.checkpoint), 'full' one
    monolithic .pt gathered on rank 0. DDP and single-process runs always write a monolithic .pt."""


@dataclass
class TrainConfig:
    run_name: str
    """Name of the run (W&B run name, the default checkpoint folder name)."""
    model: ModernBertConfig
    """The architecture (usually included from yamls/models/)."""
    data: DataConfig
    """The packed MLM loader: sources, sequence length, masking, micro-batch rows."""
    save_folder: str = ""
    """Checkpoints, metrics.jsonl and the loss curve go here; empty means runs/<run_name>."""
    max_duration: str = "10000000tok"
    """Length of the run in Composer time; 'tok' counts real (non-padding) tokens."""
    global_batch_size: int = 8
    """Packed rows of data.max_seq_len per optimizer step, over all ranks (the target, after batch_warmup)."""
    batch_warmup: BatchWarmupConfig = field(default_factory=BatchWarmupConfig)
    """Grow the global batch from a smaller start (ModernBERT: 768 rows over 50B tokens)."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """The optimizer."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """The learning-rate schedule, in tokens."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Saving, resuming, and starting from another run."""
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    """Chaining: the phase this run follows, and what it takes from it."""
    init_from: str | None = None
    """A HuggingFace ModernBERT directory to take the initial weights from (continued pretraining); its
    architecture must equal `model` (RoPE thetas and max_position_embeddings may differ)."""
    init_tile: bool = False
    """With init_from: the directory holds a smaller ModernBERT (same vocabulary), whose weights are tiled into
    this model's larger shapes (how ModernBERT-large started from base)."""
    paths: dict[str, str] = field(default_factory=dict)
    """Named locations for ${paths.NAME} interpolation elsewhere in the config (data roots, tokenizer), so a
    recipe's paths are set in one place."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging."""
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

    @property
    def total_tokens(self) -> int | None:
        """The run's length in real tokens, when max_duration is given in tokens."""
        return int(self.max_duration[:-3]) if self.max_duration.endswith("tok") else None

    def check_world(self, world_size: int) -> None:
        """Combinations that only make sense once the number of ranks is known; before any model is built."""
        if self.global_batch_size % world_size:
            raise ConfigError(f"'global_batch_size' ({self.global_batch_size}) must be divisible by the number of "
                              f"ranks ({world_size}); use a multiple of {world_size}")
        step = world_size * self.micro_batch_rows(world_size)
        for key, rows in (("global_batch_size", self.global_batch_size), ("batch_warmup.start", self.batch_warmup.start)):
            if rows % step:
                raise ConfigError(f"'{key}' ({rows}) must be a multiple of ranks x data.micro_batch_size "
                                  f"({world_size} x {self.micro_batch_rows(world_size)} = {step}); use "
                                  f"{max(step, rows // step * step)} or change data.micro_batch_size")
        if self.batch_warmup.start > self.global_batch_size:
            raise ConfigError(f"'batch_warmup.start' ({self.batch_warmup.start}) is larger than 'global_batch_size' "
                              f"({self.global_batch_size}); the warmup grows the batch towards it")

    def micro_batch_rows(self, world_size: int) -> int:
        """Rows of one micro-batch on one rank: data.micro_batch_size, or the rank's whole share when 0."""
        if self.data.micro_batch_size == 0 and self.batch_warmup.start:
            raise ConfigError("batch_warmup needs data.micro_batch_size > 0: steps of different sizes are made of "
                              "whole micro-batches")
        return self.data.micro_batch_size or self.global_batch_size // world_size


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
    config = build(TrainConfig, resolved, source=str(path))
    if config.phase.after:  # made absolute, so the run and `plan` find it from anywhere
        config.phase.after = str(predecessor_path(config.phase.after, path).resolve())
    return config


def resolved_yaml(config: TrainConfig) -> str:
    import dataclasses

    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(config)))
