"""Start a larger ModernBERT from a smaller one's weights by tiling them into the larger shapes.

ModernBERT-large began from ModernBERT-base this way rather than from random weights. Every tensor of the larger
model is filled by repeating the smaller tensor along each dimension and cutting to size; fused tensors are
tiled part by part (Wqkv as q, k and v; the GLU's Wi as input and gate) so that each part stays what it was.
Larger layer i takes smaller layer i x (small layers / large layers), in order; a norm the smaller layer does
not have (layer 0 has no attention norm) starts at ones. The vocabulary must be the same.
"""

from __future__ import annotations

import math
import re

import torch

from bertforge.errors import CheckpointError
from bertforge.model.hf_io import TIED_KEY

# Tensors made of equal parts along dim 0, each part to be tiled on its own.
_FUSED_PARTS = {"attn.Wqkv.weight": 3, "mlp.Wi.weight": 2}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def tile_tensor(small: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    reps = [math.ceil(n / s) for n, s in zip(shape, small.shape)]
    return small.repeat(*reps)[tuple(slice(0, n) for n in shape)].clone()


def _tile_part_wise(small: torch.Tensor, shape: torch.Size, parts: int) -> torch.Tensor:
    part_shape = torch.Size([shape[0] // parts, *shape[1:]])
    return torch.cat([tile_tensor(p, part_shape) for p in small.chunk(parts, dim=0)], dim=0)


def tile_state_dict(small: dict[str, torch.Tensor], small_layers: int, large: dict[str, torch.Tensor],
                    large_layers: int, *, source: str) -> dict[str, torch.Tensor]:
    """Weights for the larger model (whose state dict ``large`` gives the names and shapes)."""
    out = {}
    for name, target in large.items():
        if name == TIED_KEY:  # the token embedding, tied
            continue
        match = _LAYER.match(name)
        key = name
        if match:
            key = f"model.layers.{int(match.group(1)) * small_layers // large_layers}.{match.group(2)}"
        if key not in small:
            if name.endswith("norm.weight"):
                out[name] = torch.ones_like(target)
                continue
            raise CheckpointError(f"{source}: no tensor '{key}' to tile into '{name}'")
        if name == "model.embeddings.tok_embeddings.weight" and small[key].shape[0] != target.shape[0]:
            raise CheckpointError(f"{source}: vocabulary of {small[key].shape[0]} tokens, the larger model has "
                                  f"{target.shape[0]}; tiling needs the same tokenizer")
        parts = next((n for suffix, n in _FUSED_PARTS.items() if name.endswith(suffix)), 1)
        out[name] = _tile_part_wise(small[key], target.shape, parts) if parts > 1 else \
            tile_tensor(small[key], target.shape)
    return out
