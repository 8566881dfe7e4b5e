"""The training run config: every YAML key of `bertforge train`, with its default and meaning.

This module imports only the standard library and the schema helper (OmegaConf is loaded inside the loader
function), so `bertforge plan`, `bertforge slurm` and `bertforge train --print-config` read a run without
loading torch. Checks that need more than one key, or the number of ranks, or the files a run reads, live in
``bertforge.train.preflight``; the ``__post_init__`` checks here are about one value each.

A run file may pull in other YAML files with ``includes:``, a mapping from a config key to a file
(``model: models/tiny.yaml``; the key ``.`` merges a file at the top level). Paths are relative to the including
file, else to ``yamls/``. The run file's own keys, then command-line ``key=value`` overrides, win.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from omegaconf import OmegaConf

from bertforge.data.config import DataConfig
from bertforge.errors import ConfigError
from bertforge.eval.config import EvalConfig
from bertforge.model.config import ModernBertConfig
from bertforge.schema import load_config

_TIME = re.compile(r"^(\d+)(tok|ba|ep|sp)$")


def parse_time(text: str, key: str) -> tuple[int, str]:
    """A Composer time string ('1000000tok', '500ba', '1ep', '64sp') as (count, unit); the one parser of them.
    Every time a run config holds (its length, checkpoint and eval intervals) must be above zero: a zero length
    trains nothing, and a zero interval never fires (or divides by zero)."""
    match = _TIME.match(text)
    if not match:
        raise ConfigError(f"'{key}' must be a Composer time like '1000000tok' (real tokens), '100ba' (batches), "
                          f"'1ep' or '64sp', got {text!r}")
    if int(match.group(1)) == 0:
        raise ConfigError(f"'{key}' must be above zero, got {text!r}"
                          + ("; to switch evaluation off, leave it empty (eval.interval=)"
                             if key == "eval.interval" else ""))
    return int(match.group(1)), match.group(2)


@dataclass
class OptimizerConfig:
    name: Literal["stableadamw", "adamw"] = "stableadamw"
    """stableadamw (torch-optimi, AdamW with update clipping) or adamw (decoupled AdamW)."""
    lr: float = 8e-4
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    """Adam betas."""
    eps: float = 1e-6
    """Adam epsilon."""
    weight_decay: float = 1e-5
    """Decoupled weight decay, applied to matrices and embeddings only."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.eps <= 0:
            raise ConfigError(f"'lr' and 'eps' must be above 0, got lr={self.lr}, eps={self.eps}")
        if self.weight_decay < 0:
            raise ConfigError(f"'weight_decay' must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ConfigError(f"'betas' must be two numbers in [0, 1), e.g. [0.9, 0.98], got {self.betas}")


@dataclass
class ScheduleConfig:
    name: Literal["wsd", "constant", "cosine"] = "wsd"
    """wsd (warmup, stable, decay), constant (after warmup), or cosine (warmup then cosine to min)."""
    warmup_tokens: int = 0
    """Linear warmup from 0 over this many tokens."""
    decay_tokens: int = 0
    """wsd only: the final decay lasts this many tokens (0: no decay)."""
    decay_shape: Literal["linear", "cosine", "1-sqrt"] = "linear"
    """wsd only: shape of the final decay."""
    min_lr_ratio: float = 0.0
    """LR at the end of a decay, as a fraction of the peak."""

    def __post_init__(self) -> None:
        if self.warmup_tokens < 0 or self.decay_tokens < 0:
            raise ConfigError("'warmup_tokens' and 'decay_tokens' must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio}")

    @property
    def decays(self) -> bool:
        """Whether the LR falls over the run, which needs the run's length in tokens."""
        return bool(self.decay_tokens) or self.name == "cosine"


@dataclass
class BatchWarmupConfig:
    start: int = 0
    """Global batch (rows) at the first step; 0 disables the warmup."""
    tokens: int = 0
    """The batch grows linearly to global_batch_size over this many tokens (counted as rows x max_seq_len)."""

    def __post_init__(self) -> None:
        if self.start < 0 or self.tokens < 0:
            raise ConfigError("'batch_warmup.start' and 'batch_warmup.tokens' must be >= 0")


@dataclass
class CheckpointConfig:
    interval: str = "1000ba"
    """How often to save: Composer time ('500ba' batches, '100000000tok' tokens); always also at the end."""
    keep: int = 3
    """Keep the last K checkpoints (-1: all; 0 is refused, since it would keep none)."""
    autoresume: bool = True
    """Resume from the latest checkpoint in save_folder if there is one (crash or requeue)."""
    load_path: str | None = None
    """Start from this checkpoint instead (a new phase); ignored when autoresume finds one."""
    load_weights_only: bool = False
    """With load_path: take the weights only, with a fresh optimizer, schedule and token clock."""
    state_dict_type: Literal["sharded", "full"] = "sharded"
    """fsdp2 only: 'sharded' writes a directory of per-rank shards (torch.distributed.checkpoint), 'full' one
    monolithic .pt gathered on rank 0. DDP and single-process runs always write a monolithic .pt."""

    def __post_init__(self) -> None:
        parse_time(self.interval, "checkpoint.interval")
        if self.keep == 0 or self.keep < -1:
            raise ConfigError(f"'keep' must be -1 (keep all) or at least 1, got {self.keep}; a run that "
                              f"keeps no checkpoint cannot resume or export")


StabilityAction = Literal["stop", "skip", "rollback"]


@dataclass
class StabilityConfig:
    """The divergence guard: what a step with a non-finite or spiking loss or gradient norm does.

    The guard looks at each step after its backward pass and before the optimizer applies it, so a bad step never
    reaches the weights, and a checkpoint only ever holds weights from accepted steps."""

    enabled: bool = True
    """Watch every step; off only to reproduce a run as it was."""
    on_nonfinite: StabilityAction = "rollback"
    """A NaN or infinite loss or gradient norm: 'stop' (exit non-zero, naming the step and tokens), 'skip' (drop
    the step's update) or 'rollback' (drop it, reload the last good checkpoint, skip the data since, scale the LR)."""
    on_spike: StabilityAction = "skip"
    """A loss (or gradient-norm) spike, as defined by loss_zscore and grad_norm_ratio; the same actions."""
    loss_zscore: float = 6.0
    """A spike: loss above the mean of the recent accepted steps by this many standard deviations (0: off)."""
    grad_norm_ratio: float = 0.0
    """A spike: gradient norm above this multiple of the recent accepted steps' mean (0: off)."""
    window: int = 100
    """Accepted steps the running mean and deviation are taken over."""
    min_history: int = 50
    """Steps accepted before spikes are looked for (early training moves fast)."""
    max_rollbacks: int = 3
    """Rollbacks allowed in the whole run; one more stops it."""
    rollback_lr_scale: float = 1.0
    """Multiply the learning rate by this at each rollback (0.5: halve it), for the rest of the run."""
    max_skips_in_a_row: int = 20
    """Consecutive dropped steps allowed; one more stops the run (the data alone is not the problem then)."""

    def __post_init__(self) -> None:
        for key in ("loss_zscore", "grad_norm_ratio"):
            if getattr(self, key) < 0:
                raise ConfigError(f"'{key}' must be >= 0 (0 turns it off), got {getattr(self, key)}")
        for key in ("window", "min_history", "max_skips_in_a_row"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        if self.min_history > self.window:
            raise ConfigError(f"'min_history' ({self.min_history}) cannot exceed 'window' "
                              f"({self.window})")
        if self.max_rollbacks < 0:
            raise ConfigError(f"'max_rollbacks' must be >= 0, got {self.max_rollbacks}")
        if not 0.0 < self.rollback_lr_scale <= 1.0:
            raise ConfigError(f"'rollback_lr_scale' must be in (0, 1], got {self.rollback_lr_scale}")


@dataclass
class PhaseConfig:
    after: str | None = None
    """Run config of the phase this one follows (relative to this file); start from its final checkpoint."""
    load: Literal["weights", "weights_and_optimizer"] = "weights"
    """What to take from the predecessor: its weights, or its weights and optimizer state (the token clock,
    schedule and data position always start afresh)."""


@dataclass
class WandbConfig:
    enabled: bool = False
    """Log to Weights & Biases (WANDB_MODE=offline works without a network)."""
    project: str = "bertforge"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user); None uses the logged-in default."""
    group: str | None = None
    """W&B group, e.g. the name of a phase chain."""
    tags: list[str] = field(default_factory=list)
    """W&B run tags."""
    run_id: str | None = None
    """W&B run id; None takes WANDB_RUN_ID, else the id saved in save_folder, else a new one, so a resumed or
    requeued run keeps logging to the same W&B run."""


@dataclass
class TrainConfig:
    run_name: str
    """Name of the run (W&B run name, the default checkpoint folder name)."""
    model: ModernBertConfig
    """The architecture (usually included from yamls/models/)."""
    data: DataConfig
    """The packed MLM loader: sources, sequence length, masking, micro-batch rows."""
    save_folder: str = ""
    """Checkpoints, metrics.jsonl and the loss curve go here; empty means runs/<run_name>. An object store
    (``s3://bucket/prefix``) works too: the run writes into ``staging_folder`` and uploads each checkpoint once it
    is complete (its checksum manifest last), and a restart, the next phase and `bertforge export` read from it."""
    staging_folder: str | None = None
    """With save_folder in an object store: the local folder the run writes in before uploading (it must be shared
    by the nodes of a multi-node run, as a local save_folder must). Default: a folder per save_folder under the
    system's temporary folder."""
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
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    """The divergence guard: non-finite and spiking steps never reach the weights."""
    phase: PhaseConfig = field(default_factory=PhaseConfig)
    """Chaining: the phase this run follows, and what it takes from it."""
    init_from: str | None = None
    """A HuggingFace ModernBERT directory to take the initial weights from (continued pretraining); its
    architecture must equal `model` (RoPE thetas and max_position_embeddings may differ)."""
    init_tile: bool = False
    """With init_from: the directory holds a smaller ModernBERT (same vocabulary), whose weights are tiled into
    this model's larger shapes (how ModernBERT-large started from base)."""
    init_optimizer: bool = False
    """With init_from a research-repository checkpoint (.pt): also take its optimizer state, the AdamW moments and
    step count of every parameter, so a branched phase continues the optimizer where it was. Where the state does
    not fit (another optimizer, other parameters, keyed by position), the run says why and starts it fresh."""
    paths: dict[str, str] = field(default_factory=dict)
    """Named locations for ${paths.NAME} interpolation elsewhere in the config (data roots, tokenizer), so the
    paths of a chain of phases are set in one place."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging."""
    precision: Literal["auto", "fp32", "amp_bf16"] = "auto"
    """'auto': amp_bf16 on a GPU, and on a CPU with bf16 units (AMX or AVX-512 BF16, read from /proc/cpuinfo), where
    bertforge applies the bf16 autocast itself (Composer refuses it on CPU); fp32 on other CPUs. Weights, gradients
    and optimizer state are float32 in every case (train/precision.py; docs/training.md "Precision")."""
    parallelism: Literal["ddp", "fsdp2"] = "ddp"
    """ddp (plain data parallel, or one process) or fsdp2 (sharded, through Composer's FSDP2)."""
    activation_checkpointing: bool = False
    """Recompute layer activations in the backward pass (FSDP2) to save memory."""
    compile: bool | None = None
    """torch.compile the model as the run trains it (Composer's compile_config, so FSDP2, checkpoints and export
    see the plain module). Empty (default): compiled on CUDA, where the step runs about twice as fast, eager on
    CPU, where compiling takes longer than a short run saves."""
    seed: int = 17
    """Seed of initialisation, data order and masking."""
    log_interval: int = 1
    """Write metrics every N batches."""
    peak_flops: float | None = None
    """Peak FLOP/s of one device for MFU; None looks the GPU up in a table (no MFU on CPU)."""
    export_dir: str | None = None
    """Export the final model (and tokenizer) as a HuggingFace directory here."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Held-out masked-LM evaluation at an interval (off while ``eval.interval`` is empty)."""
    downstream: list[str] = field(default_factory=list)
    """Fine-tuning tasks to score the exported model on when the run ends: task YAMLs or suites (``glue``), as
    ``bertforge finetune`` takes them; needs export_dir. The results table goes to <save_folder>/downstream/."""

    def compiled_on(self, device: str) -> bool:
        """Whether the model is compiled on ``device`` ('gpu' or 'cpu'): ``compile``, or by default on GPUs only."""
        return device == "gpu" if self.compile is None else self.compile

    def __post_init__(self) -> None:
        if (not self.run_name or self.run_name in (".", "..") or any(c in self.run_name for c in "/\\")
                or not self.run_name.isprintable()):
            raise ConfigError(f"'run_name' must be one folder name (no '/', not '.' or '..', no control characters), "
                              f"got {self.run_name!r}: it names files and folders of the run")
        self.save_folder = self.save_folder or f"runs/{self.run_name}"
        if self.global_batch_size <= 0:
            raise ConfigError(f"'global_batch_size' must be positive, got {self.global_batch_size}")
        parse_time(self.max_duration, "max_duration")
        if self.downstream and not self.export_dir:
            raise ConfigError("'downstream' fine-tunes the model the run exports, so set 'export_dir' too")
        if self.init_optimizer and not (self.init_from or "").endswith(".pt"):
            raise ConfigError(f"'init_optimizer' takes the optimizer state of a research checkpoint, so 'init_from' "
                              f"must name its .pt file, got {self.init_from!r}; a HuggingFace directory holds none "
                              f"(set init_optimizer: false)")
        if self.eval.probe.tasks and not self.eval.interval:
            raise ConfigError("'eval.probe.tasks' are probed at every evaluation, and 'eval.interval' is empty (no "
                              "evaluation); set eval.interval (for example 1000000000tok) or remove the probe's "
                              "tasks")
        if self.eval.interval and parse_time(self.eval.interval, "eval.interval")[1] not in ("ba", "tok"):
            raise ConfigError(f"'eval.interval' must count batches or tokens ('2000ba', '1000000000tok'), got "
                              f"{self.eval.interval!r}")

    def eval_streams(self) -> dict[str, str]:
        """The held-out datasets to evaluate on: eval.streams, or the eval/ split beside each stream (a folder, or
        a URL for a remote stream)."""
        if self.eval.streams:
            return dict(self.eval.streams)
        return {name: f"{s.remote.rstrip('/')}/eval" if s.remote else str(Path(s.local) / "eval")
                for name, s in self.data.streams.items()}

    @property
    def total_tokens(self) -> int | None:
        """The run's length in real tokens, when max_duration is given in tokens."""
        count, unit = parse_time(self.max_duration, "max_duration")
        return count if unit == "tok" else None

    def micro_batch_rows(self, world_size: int) -> int:
        """Rows of one micro-batch on one rank: data.micro_batch_size, or the rank's whole share when 0."""
        return self.data.micro_batch_size or self.global_batch_size // world_size


def predecessor_path(after: str, source: Path) -> Path:
    """The run config that ``phase.after`` (as written in ``source``) names, relative to ``source``'s folder."""
    path = (source.parent / after) if not Path(after).is_absolute() else Path(after)
    if not path.is_file():
        raise ConfigError(f"{source}: phase.after names '{after}', but {path} does not exist")
    return path


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    config = load_config(TrainConfig, path, overrides)
    if config.phase.after:  # made absolute, so the run and `plan` find it from anywhere
        config.phase.after = str(predecessor_path(config.phase.after, path).resolve())
    return config


def resolved_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(dataclasses.asdict(config)))
