"""The architecture of a ModernBERT encoder: every knob, its default, and the checks that keep it buildable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bertforge.errors import ConfigError
from bertforge.paths import resolve_yaml
from bertforge.schema import load_config

AttentionBackend = Literal["auto", "flash", "flex", "sdpa"]


@dataclass
class ModernBertConfig:
    """Defaults are ModernBERT-base's; ``yamls/models/*.yaml`` override them for each size."""

    vocab_size: int = 50368
    """Rows of the token embedding (and the tied decoder); a multiple of 64 is fastest on GPUs."""
    hidden_size: int = 768
    """Width of the residual stream."""
    intermediate_size: int = 1152
    """Width of one GLU half: Wi maps hidden -> 2 x this."""
    num_hidden_layers: int = 22
    """Encoder layers."""
    num_attention_heads: int = 12
    """Attention heads; hidden_size must divide evenly by it."""
    global_attn_every_n_layers: int = 3
    """Layer i attends globally when i % N == 0, else within the local window."""
    local_attention: int = 128
    """Full sliding window of local layers (even): each token sees window/2 tokens either side."""
    global_rope_theta: float = 10000.0
    """RoPE base of global layers (160000 after context extension)."""
    local_rope_theta: float = 10000.0
    """RoPE base of local layers."""
    max_position_embeddings: int = 8192
    """Longest sequence the model is meant for; recorded in exports."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon (LayerNorms carry no bias)."""
    embedding_dropout: float = 0.0
    """Dropout after the embedding norm."""
    attention_dropout: float = 0.0
    """Dropout on attention probabilities."""
    attention_output_dropout: float = 0.0
    """Dropout after the attention output projection (0.1 in ModernBERT pretraining)."""
    mlp_dropout: float = 0.0
    """Dropout inside the GLU, before its output projection."""
    init_std: float = 0.02
    """Std of the truncated-normal init; output projections use init_std / sqrt(2 x layers)."""
    init_cutoff: float = 3.0
    """Truncate the init normal at this many std."""
    pad_token_id: int = 50283
    """[PAD] id."""
    cls_token_id: int = 50281
    """[CLS] id, which opens every document."""
    sep_token_id: int = 50282
    """[SEP] id, which closes every document."""
    mask_token_id: int = 50284
    """[MASK] id used by MLM masking."""
    attention_backend: AttentionBackend = "auto"
    """'flash' (FlashAttention-2 varlen: CUDA, flash-attn installed), 'flex' (PyTorch FlexAttention, compiled on
    CUDA; no attention dropout), 'sdpa' (pure PyTorch, any device), or 'auto': flash where it can run, else flex
    on CUDA, else sdpa."""
    mlm_loss_chunk: int = 0
    """Training (packed, with labels) only: 0 computes the decoder and cross-entropy over every predicted position
    at once, as transformers does; N > 0 fuses them over chunks of N positions (model/mlm_loss.py), so the
    predictions x vocab logits are never all held at once, and the output carries top predictions, not logits.
    Same loss and gradients; set it (e.g. 4096) where the logits are a large share of memory (big vocabularies,
    long or large micro-batches on a GPU)."""

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "global_attn_every_n_layers", "local_attention", "max_position_embeddings")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"'{key}' must be positive, got {getattr(self, key)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"'hidden_size' ({self.hidden_size}) must be divisible by 'num_attention_heads' "
                f"({self.num_attention_heads}); pick a head count that divides it (head dim 64 is usual)")
        if self.head_dim % 2:
            raise ConfigError(f"head dim hidden_size/num_attention_heads = {self.head_dim} must be even for RoPE")
        if self.local_attention % 2:
            raise ConfigError(
                f"'local_attention' is the full sliding window and must be even (window/2 tokens each side), "
                f"got {self.local_attention}; use {self.local_attention + 1}")
        if self.mlm_loss_chunk < 0:
            raise ConfigError(f"'mlm_loss_chunk' must be 0 (plain loss) or a positive number of positions, got "
                              f"{self.mlm_loss_chunk}")
        for key in ("embedding_dropout", "attention_dropout", "attention_output_dropout", "mlp_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"'{key}' must be in [0, 1), got {getattr(self, key)}")
        if self.attention_backend == "flex" and self.attention_dropout > 0:
            raise ConfigError(
                f"attention_backend 'flex' has no dropout on attention probabilities, and 'attention_dropout' is "
                f"{self.attention_dropout}; set attention_dropout=0 (ModernBERT uses 0) or pick 'sdpa' or 'flash'")
        for key in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
            if not 0 <= getattr(self, key) < self.vocab_size:
                raise ConfigError(f"'{key}' ({getattr(self, key)}) must be a valid id below vocab_size "
                                  f"({self.vocab_size})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def is_global_layer(self, layer: int) -> bool:
        return layer % self.global_attn_every_n_layers == 0


@dataclass
class ClassifierConfig:
    """The sequence-classification head on top of the encoder: transformers' ModernBertForSequenceClassification
    keys, so a fine-tuned model round-trips through its config.json."""

    labels: list[str]
    """Label names, in id order; one name for regression (a single output)."""
    problem_type: Literal["single_label_classification", "multi_label_classification", "regression"] = \
        "single_label_classification"
    """Cross-entropy over the labels, independent sigmoids (BCE) per label, or mean squared error."""
    pooling: Literal["cls", "mean"] = "mean"
    """The sequence vector: the first token's ([CLS]) final state, or the mean over the sequence's tokens."""
    dropout: float = 0.0
    """Dropout before the classifier."""

    def __post_init__(self) -> None:
        if not self.labels:
            raise ConfigError("'labels' must name at least one label")
        if (self.problem_type == "regression") != (len(self.labels) == 1):
            raise ConfigError(f"regression has exactly one output and classification at least two labels; got "
                              f"problem_type {self.problem_type!r} with labels {self.labels}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"'dropout' must be in [0, 1), got {self.dropout}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)


def load_model_config(name_or_path: str | Path, overrides: list[str] | None = None) -> ModernBertConfig:
    """Read a preset name (tiny, base, large) or a YAML file, with ``key=value`` overrides applied."""
    return load_config(ModernBertConfig, resolve_yaml(name_or_path, "models"), overrides)
