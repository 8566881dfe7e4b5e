"""The blocks of a ModernBERT encoder. Module and parameter names match HuggingFace's, so state dicts map 1:1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bertforge.model.attention import resolve_backend, varlen_attention
from bertforge.model.config import ModernBertConfig
from bertforge.model.layout import SequenceLayout
from bertforge.model.rope import apply_rotary


def layer_norm(config: ModernBertConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=False)


class Embeddings(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.norm = layer_norm(config)
        self.drop = nn.Dropout(config.embedding_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.tok_embeddings(input_ids)))


class Attention(nn.Module):
    def __init__(self, config: ModernBertConfig, layer: int):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.is_global = config.is_global_layer(layer)
        self.half_window = None if self.is_global else config.local_attention // 2
        self.rope_theta = config.global_rope_theta if self.is_global else config.local_rope_theta
        self.dropout = config.attention_dropout
        self.backend = config.attention_backend
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=False)
        self.Wo = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.out_drop = nn.Dropout(config.attention_output_dropout)

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        qkv = self.Wqkv(x).view(-1, 3, self.num_heads, self.head_dim)
        cos, sin = layout.rope(self.rope_theta)
        q, k, v = qkv.unbind(1)
        qkv = torch.stack((apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v), dim=1)
        dropout = self.dropout if self.training else 0.0
        backend = resolve_backend(self.backend, qkv, self.dropout)
        out = varlen_attention(qkv, layout, self.half_window, dropout, backend)
        return self.out_drop(self.Wo(out.reshape(x.shape[0], -1)))


class GLU(nn.Module):
    """GeGLU: Wi gives [input, gate]; out = Wo(gelu(input) * gate)."""

    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.Wi = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.drop = nn.Dropout(config.mlp_dropout)
        self.Wo = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.drop(F.gelu(inp) * gate))


class EncoderLayer(nn.Module):
    """Pre-norm block; layer 0 skips attn_norm because the embeddings already end in a norm."""

    def __init__(self, config: ModernBertConfig, layer: int):
        super().__init__()
        self.attn_norm = nn.Identity() if layer == 0 else layer_norm(config)
        self.attn = Attention(config, layer)
        self.mlp_norm = layer_norm(config)
        self.mlp = GLU(config)

    def forward(self, x: torch.Tensor, layout: SequenceLayout) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), layout)
        return x + self.mlp(self.mlp_norm(x))


class PredictionHead(nn.Module):
    def __init__(self, config: ModernBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.norm = layer_norm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(F.gelu(self.dense(x)))
