"""A human-readable summary of a model config, built on the meta device so even large presets cost nothing."""

from __future__ import annotations

import torch

from bertforge.model.config import load_model_config
from bertforge.model.modernbert import ModernBertForMaskedLM, count_parameters


def build_on_meta(config) -> ModernBertForMaskedLM:
    with torch.device("meta"):
        return ModernBertForMaskedLM(config, init=False)


def describe_model(name_or_path: str, overrides: list[str] | None = None) -> str:
    config = load_model_config(name_or_path, overrides)
    model = build_on_meta(config)
    total = count_parameters(model)
    embedding = config.vocab_size * config.hidden_size
    kinds = "".join("G" if config.is_global_layer(i) else "l" for i in range(config.num_hidden_layers))
    lines = [
        f"model {name_or_path}",
        f"  parameters      {total:,} ({total / 1e6:.1f}M; {total - embedding:,} outside the embedding)",
        f"  layers          {config.num_hidden_layers} x hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads of {config.head_dim}, GLU {config.intermediate_size}",
        f"  attention       {kinds} (G global, l local window {config.local_attention})",
        f"  rope theta      global {config.global_rope_theta:g}, local {config.local_rope_theta:g}",
        f"  vocab           {config.vocab_size} (pad {config.pad_token_id}, cls {config.cls_token_id}, "
        f"sep {config.sep_token_id}, mask {config.mask_token_id})",
    ]
    return "\n".join(lines)
