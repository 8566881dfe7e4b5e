"""Every key of a fine-tuning task YAML (``yamls/finetune/``), as dataclasses; imports no torch.

A task names its data (a HuggingFace dataset and config, or local files per split), which fields hold the texts
and the label, the label set, its metrics, and the training settings. ``start_from`` names another task whose
fine-tuned model (same seed) it starts from, as ModernBERT's RTE, MRPC and STS-B start from MNLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bertforge.errors import ConfigError
from bertforge.model.config import ClassifierConfig
from bertforge.paths import resolve_yaml
from bertforge.schema import load_config
from bertforge.train.config import OptimizerConfig, WandbConfig

METRICS = ("accuracy", "f1", "f1_macro", "f1_micro", "matthews", "pearson", "spearman")


@dataclass
class TaskData:
    hf_dataset: str | None = None
    """A HuggingFace dataset by name (``nyu-mll/glue``), read with ``datasets.load_dataset``."""
    hf_config: str | None = None
    """Its configuration (``mrpc``)."""
    files: dict[str, str] = field(default_factory=dict)
    """Or local files per split name (``train: data/train.jsonl``): .jsonl/.json, .csv, .tsv or .parquet;
    relative paths are taken from the task file's folder."""
    text_fields: list[str] = field(default_factory=lambda: ["sentence"])
    """One field (a single text) or two (a pair, framed [CLS] a [SEP] b [SEP])."""
    label_field: str = "label"
    """The label: an id, a label name, a number (regression), or a list of ids or names (multi-label)."""
    missing_label: float | None = -1
    """A label value that means "no label" (GLUE's test splits carry -1): such rows are left out. None keeps
    every row (a regression target that may be -1)."""
    train_split: str = "train"
    """The split trained on."""
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    """Splits scored after every epoch; the first picks the best epoch (MNLI: matched, then mismatched)."""
    max_train_examples: int | None = None
    """Train on the first N examples only (a quick check); None uses all."""

    def __post_init__(self) -> None:
        if (self.hf_dataset is None) == (not self.files):
            raise ConfigError("a task's data names either 'hf_dataset' (a HuggingFace dataset) or 'files' (local "
                              "files per split), not both or neither")
        if len(self.text_fields) not in (1, 2):
            raise ConfigError(f"'text_fields' must name one field or a pair, got {self.text_fields}")
        if not self.eval_splits:
            raise ConfigError("'eval_splits' must name at least one split to score")
        for split in (self.train_split, *self.eval_splits):
            if self.files and split not in self.files:
                raise ConfigError(f"split '{split}' has no file under 'files' (it has: {', '.join(self.files)})")


@dataclass
class FinetuneTrainConfig:
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adamw", lr=5e-5,
                                                                               weight_decay=5e-6))
    """Decoupled AdamW (or StableAdamW), as in pretraining; no weight decay on norms and biases."""
    epochs: int = 3
    """Passes over the training split; the best epoch on the first eval split is kept."""
    batch_size: int = 64
    """Examples per optimizer step (packed into one unpadded stream)."""
    warmup_ratio: float = 0.1
    """Linear warmup over this share of the steps, then linear decay to 0."""
    max_grad_norm: float = 1.0
    """Clip the gradient's global norm to this before each step (0 turns clipping off), as transformers' Trainer
    does by default: a small task's first steps on a fresh classifier can otherwise throw the encoder off."""
    max_length: int = 256
    """Tokens per example, [CLS] and [SEP]s included; longer texts are cut (the longer of a pair first)."""
    eval_batch_size: int = 256
    """Examples per forward pass when scoring."""
    seeds: int = 3
    """Runs with seeds seed, seed+1, ...; the table reports their mean and standard deviation."""
    seed: int = 17
    """The first seed."""
    precision: Literal["auto", "fp32", "amp_bf16"] = "auto"
    """bf16 autocast on CUDA and fp32 on CPU when 'auto'."""

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "max_length", "eval_batch_size", "seeds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        if self.max_length < 4:
            raise ConfigError(f"'max_length' must leave room for [CLS] a [SEP] b [SEP], got {self.max_length}")
        if self.max_grad_norm < 0:
            raise ConfigError(f"'max_grad_norm' must be >= 0 (0 turns clipping off), got {self.max_grad_norm}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class TaskConfig:
    name: str
    """The task's name: its folder in the output, its row in the results table."""
    data: TaskData
    """Where the examples come from and which fields they use."""
    head: ClassifierConfig
    """Labels (in id order; one name for regression), problem type, pooling, dropout."""
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    """Scores per eval split, from scikit-learn and scipy: accuracy, f1 (binary), f1_macro, f1_micro, matthews,
    pearson, spearman."""
    main_metric: str = "accuracy"
    """The score that picks the best epoch (on the first eval split) and goes into the suite's average."""
    start_from: str | None = None
    """Another task (its name, in the same suite and output folder) whose fine-tuned model this one starts from,
    seed by seed: its encoder and head, with a fresh classifier."""
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    """Optimizer, schedule, epochs, batch, seeds."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging of each seed's epochs (WANDB_MODE=offline works without a network)."""

    source: str = field(default="", init=False)
    """The YAML file it was read from, for messages and relative data paths (not a key)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {unknown}; known: {', '.join(METRICS)}")
        if self.main_metric not in self.metrics:
            raise ConfigError(f"'main_metric' {self.main_metric!r} must be one of 'metrics' {self.metrics}")
        correlations = {"pearson", "spearman"}
        fits = set(self.metrics) <= correlations if self.head.problem_type == "regression" \
            else not correlations & set(self.metrics)
        if not fits:
            raise ConfigError(f"metrics {self.metrics} do not fit problem_type {self.head.problem_type!r}: "
                              f"pearson and spearman score regression, the others classification")

    def file(self, split: str) -> Path:
        """A local split's file, relative to the task file's folder."""
        path = Path(self.data.files[split])
        return path if path.is_absolute() else Path(self.source).parent / path


def load_task(path: str | Path, overrides: list[str] | None = None) -> TaskConfig:
    """A task YAML (a path, or a name under yamls/finetune/) with ``key=value`` overrides."""
    path = resolve_yaml(path, "finetune")
    task = load_config(TaskConfig, path, overrides)
    task.source = str(path)
    return task
