"""The "full megatron" initialisation ModernBERT was trained with."""

from __future__ import annotations

import math

from torch import nn

from bertforge.model.config import ModernBertConfig


def trunc_normal(weight, std: float, cutoff: float) -> None:
    """Normal(0, std) cut at ``cutoff`` std."""
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-cutoff * std, b=cutoff * std)


def init_weights(model: nn.Module, config: ModernBertConfig) -> None:
    """Inputs (embeddings, Wqkv, Wi, head dense) at init_std; outputs (both Wo) at init_std / sqrt(2 x layers).

    Scaling the residual-branch outputs by depth keeps the residual stream's variance flat at init.
    """
    out_std = config.init_std / math.sqrt(2.0 * config.num_hidden_layers)
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, nn.Embedding):
            trunc_normal(module.weight, config.init_std, config.init_cutoff)
        elif isinstance(module, nn.Linear) and name != "decoder":
            std = out_std if name.endswith(".Wo") else config.init_std
            trunc_normal(module.weight, std, config.init_cutoff)
    decoder = getattr(model, "decoder", None)
    if decoder is not None and decoder.bias is not None:
        nn.init.zeros_(decoder.bias)
