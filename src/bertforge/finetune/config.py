"""Every key of a fine-tuning task YAML (``yamls/finetune/``), as dataclasses; imports no torch.

A task names its data (a HuggingFace dataset and config, or local files per split), which fields hold the texts
and the label, the label set, its metrics, and the training settings. ``start_from`` names another task whose
fine-tuned model (same seed) it starts from, as ModernBERT's RTE, MRPC and STS-B start from MNLI.

A task with ``kind: retrieval`` (``RetrievalTaskConfig``) trains a dense (sentence-transformers) or multi-vector
(PyLate ColBERT) retriever instead and is scored on BEIR-format folders; it shares the suite's keys (name, seeds,
metrics, main_metric, wandb) and has none of a classifier's (head, text_fields, label_field, start_from).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bertforge.errors import ConfigError
from bertforge.model.config import ClassifierConfig
from bertforge.paths import resolve_yaml
from bertforge.schema import build, load_mapping
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
    kind: Literal["classification"] = "classification"
    """classification (this) or retrieval (``RetrievalTaskConfig``)."""
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


RETRIEVAL_METRICS = ("ndcg@10", "mrr@10", "map@100", "recall@10", "recall@100", "accuracy@1")
"""What sentence-transformers' InformationRetrievalEvaluator (and PyLate's, its subclass) reports, by its names."""


@dataclass
class RetrievalData:
    beir: str
    """A BEIR-format folder scored after every epoch: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
    ``queries.jsonl`` (``_id``, ``text``), ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a
    header line); relative paths are taken from the task file's folder."""
    eval_splits: list[str] = field(default_factory=lambda: ["test"])
    """The qrels splits scored; the first picks the best epoch."""
    train_split: str = "train"
    """With no ``train_file`` and no ``hf_dataset``: the training pairs are this qrels split of ``beir`` (each
    query with each document it rates above 0), negatives coming from the batch."""
    train_file: str | None = None
    """Or training rows from a local .jsonl/.json, .csv, .tsv or .parquet file: (query, positive[, negatives...])
    texts in ``columns`` order."""
    hf_dataset: str | None = None
    """Or from a HuggingFace dataset by name
    (``sentence-transformers/msmarco-co-condenser-margin-mse-sym-mnrl-mean-v1``)."""
    hf_config: str | None = None
    """Its configuration (``triplet-hard``)."""
    hf_split: str = "train"
    """Its split."""
    columns: list[str] = field(default_factory=list)
    """The training rows' text fields in order: query, positive, then any hard negatives; empty takes every
    column in the file's order. With ``scores_field``: the query, then the list of documents."""
    scores_field: str | None = None
    """ColBERT only: a field holding the teacher's score of each document of the row (a list, as long as the
    documents): the model is then distilled (PyLate's Distillation loss) instead of trained contrastively."""
    hf_queries_config: str | None = None
    """Distillation from a dataset of ids (``lightonai/ms-marco-en-bge``): the configuration holding the queries'
    texts (``queries``); the rows' ``query_id`` and ``document_ids`` are looked up with PyLate's KDProcessing."""
    hf_documents_config: str | None = None
    """And the configuration holding the documents' texts (``documents``)."""
    max_train_examples: int | None = None
    """Train on the first N rows only (a quick check); None uses all."""

    def __post_init__(self) -> None:
        if self.train_file and self.hf_dataset:
            raise ConfigError("a retrieval task's training rows come from 'train_file' or 'hf_dataset', not both")
        if not self.eval_splits:
            raise ConfigError("'eval_splits' must name at least one qrels split to score")
        if (self.hf_queries_config is None) != (self.hf_documents_config is None):
            raise ConfigError("'hf_queries_config' and 'hf_documents_config' go together (a dataset of ids needs "
                              "both texts)")
        if self.hf_queries_config and not (self.hf_dataset and self.scores_field):
            raise ConfigError("'hf_queries_config' serves distillation from an HF dataset: set 'hf_dataset' and "
                              "'scores_field' too")


@dataclass
class RetrievalTrainConfig:
    lr: float = 8e-5
    """Peak learning rate of AdamW (the libraries' trainer), after a linear warmup, decaying linearly to 0."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay."""
    epochs: int = 1
    """Passes over the training rows; the best epoch on the first eval split is kept."""
    batch_size: int = 64
    """Rows per step: each query's positive is every other query's in-batch negative. No text repeats within a
    batch (sentence-transformers' NO_DUPLICATES sampler)."""
    mini_batch_size: int | None = None
    """Set it (16 in the paper) to use the cached losses (CachedMultipleNegativesRankingLoss, PyLate's
    CachedContrastive): the batch's negatives at the memory of this many rows."""
    warmup_ratio: float = 0.05
    """Linear warmup over this share of the steps."""
    max_length: int = 256
    """Tokens per document (and per dense query); longer texts are cut."""
    query_length: int = 32
    """ColBERT only: tokens per query (PyLate pads shorter queries with [MASK] expansion tokens)."""
    embedding_size: int = 128
    """ColBERT only: the size of each token's vector after the projection."""
    eval_batch_size: int = 64
    """Texts per forward pass when scoring."""
    seeds: int = 1
    """Runs with seeds seed, seed+1, ...; the table reports their mean and standard deviation."""
    seed: int = 17
    """The first seed."""
    precision: Literal["auto", "fp32", "amp_bf16"] = "auto"
    """bf16 on CUDA and fp32 on CPU when 'auto'."""

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "max_length", "query_length", "embedding_size", "eval_batch_size",
                    "seeds"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        if self.batch_size < 2:
            raise ConfigError(f"'batch_size' must be at least 2 (in-batch negatives), got {self.batch_size}")
        if self.mini_batch_size is not None and not 1 <= self.mini_batch_size <= self.batch_size:
            raise ConfigError(f"'mini_batch_size' must be in 1..batch_size ({self.batch_size}), got "
                              f"{self.mini_batch_size}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError(f"'lr' must be above 0 and 'weight_decay' >= 0, got {self.lr}, {self.weight_decay}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"'warmup_ratio' must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class RetrievalTaskConfig:
    name: str
    """The task's name: its folder in the output, its row in the results table."""
    kind: Literal["retrieval"]
    """retrieval: a retriever fine-tuned from the model, scored by nDCG@10 and friends."""
    data: RetrievalData
    """The BEIR folder scored, and where the training rows come from."""
    model: Literal["dense", "colbert"] = "dense"
    """dense: one vector per text, mean pooling (sentence-transformers, MultipleNegativesRankingLoss); colbert: a
    vector per token, MaxSim (PyLate, contrastive loss or distillation)."""
    metrics: list[str] = field(default_factory=lambda: ["ndcg@10", "mrr@10", "recall@100"])
    """Scores per eval split from the libraries' evaluators: ndcg@10, mrr@10, map@100, recall@10, recall@100,
    accuracy@1."""
    main_metric: str = "ndcg@10"
    """The score that picks the best epoch (on the first eval split) and goes into the suite's average."""
    train: RetrievalTrainConfig = field(default_factory=RetrievalTrainConfig)
    """Learning rate, schedule, epochs, batch, lengths, seeds."""
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases logging of each seed's epochs (WANDB_MODE=offline works without a network)."""

    source: str = field(default="", init=False)
    """The YAML file it was read from, for messages and relative data paths (not a key)."""
    start_from: None = field(default=None, init=False)
    """Retrievers start from the model given (not a key: the suite asks every task)."""

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in RETRIEVAL_METRICS]
        if unknown:
            raise ConfigError(f"unknown retrieval metric(s) {unknown}; known: {', '.join(RETRIEVAL_METRICS)}")
        if self.main_metric not in self.metrics:
            raise ConfigError(f"'main_metric' {self.main_metric!r} must be one of 'metrics' {self.metrics}")
        if self.data.scores_field and self.model != "colbert":
            raise ConfigError("'data.scores_field' (distillation from teacher scores) is for model: colbert; a "
                              "dense model trains on (query, positive, negatives) rows")

    def path(self, value: str) -> Path:
        """A path from the task file, relative to its folder."""
        path = Path(value)
        return path if path.is_absolute() else Path(self.source).parent / path


_CLASSIFICATION_ONLY = {"head", "start_from", "data.files", "data.text_fields", "data.label_field",
                        "data.missing_label", "train.optimizer", "train.max_grad_norm"}
"""Keys a classification task has and a retrieval task refuses, so a mixed file gets a message that says so."""


def load_task(path: str | Path, overrides: list[str] | None = None) -> TaskConfig | RetrievalTaskConfig:
    """A task YAML (a path, or a name under yamls/finetune/) with ``key=value`` overrides: a classification task,
    or a retrieval task when it says ``kind: retrieval``."""
    path = resolve_yaml(path, "finetune")
    values = load_mapping(path, overrides)
    if isinstance(values, dict) and values.get("kind") == "retrieval":
        present = {key for key in _CLASSIFICATION_ONLY if _has_key(values, key)}
        if present:
            raise ConfigError(f"{path}: {', '.join(sorted(present))} belong to classification tasks, and this one "
                              f"says kind: retrieval; remove them, or remove 'kind: retrieval' to fine-tune a "
                              f"classifier")
        task = build(RetrievalTaskConfig, values, source=str(path))
    else:
        task = build(TaskConfig, values, source=str(path))
    task.source = str(path)
    return task


def _has_key(values: dict, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(values, dict) or part not in values:
            return False
        values = values[part]
    return True
