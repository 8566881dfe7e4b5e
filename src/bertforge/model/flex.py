"""FlexAttention over a packed token stream: PyTorch's own fused attention kernel, no extension to build.

The whole packed stream is one (1, heads, tokens, head_dim) sequence; a block mask keeps each query inside its own
document and, on local layers, inside the sliding window. The block mask tells the kernel which 128 x 128 tiles
of the (tokens x tokens) score matrix to compute at all ("partial" tiles apply the token-level rule, "full" tiles
skip it), so the work follows the documents' own lengths, as with flash-attn's varlen kernel. It is built here
straight from ``cu_seqlens`` in O((tokens / 128)^2) without the token-level mask ever existing, and the layout
caches one per window size so every layer of a kind shares it.

On CUDA the kernel is compiled (Triton). Elsewhere torch runs FlexAttention's reference implementation, which
is exact but materialises the full score matrix: right for tests on CPU, not for speed (use ``sdpa`` there).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

BLOCK = 128
"""Tile size of the block mask, FlexAttention's default."""


@functools.cache
def _kernel(compiled: bool):
    return torch.compile(flex_attention) if compiled else flex_attention


def document_block_mask(sequence_of_token: torch.Tensor, half_window: int | None, block: int = BLOCK) -> BlockMask:
    """The block mask of a packed stream whose token i belongs to sequence ``sequence_of_token[i]`` (sequences
    contiguous and in order), with ``half_window`` tokens each side (None: the whole sequence).

    Built from tensors alone, sized by the stream's shape: nothing is read back to the host, so a compiled forward
    builds it inside its graph."""
    total = sequence_of_token.shape[0]
    device = sequence_of_token.device
    blocks = -(-total // block)
    # Slots past the last token belong to no document (-1); the kernel never reads them as keys.
    doc = F.pad(sequence_of_token.long(), (0, blocks * block - total), value=-1)
    tiles = doc.view(blocks, block)
    first, last = tiles[:, 0], tiles.amax(dim=1)  # documents are contiguous and in order: a tile holds [first, last]
    whole = (first == last) & (tiles[:, -1] >= 0)  # the tile lies inside one document
    touch = (first[:, None] <= last[None, :]) & (first[None, :] <= last[:, None])
    full = whole[:, None] & whole[None, :] & (first[:, None] == first[None, :])
    if half_window is not None:
        apart = (torch.arange(blocks, device=device)[:, None] - torch.arange(blocks, device=device)[None, :]).abs()
        nearest = (apart - 1).clamp(min=0) * block + (apart > 0).long()  # closest pair of tokens of two tiles
        farthest = (apart + 1) * block - 1
        touch &= nearest <= half_window
        full &= farthest <= half_window

    def mask_mod(b, h, q, kv):
        same = (doc[q] == doc[kv]) & (doc[kv] >= 0)
        if half_window is None:
            return same
        return same & ((q - kv).abs() <= half_window)

    partial = touch & ~full
    return BlockMask.from_kv_blocks(*_ordered(partial), *_ordered(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(total, total))


def _ordered(tiles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A dense (q tiles, kv tiles) bool table as FlexAttention wants it: counts, and the kv tiles listed first."""
    counts = tiles.sum(dim=1, dtype=torch.int32)
    order = torch.argsort(tiles.to(torch.int8), dim=1, descending=True, stable=True).to(torch.int32)
    return counts[None, None], order[None, None]


def flex_varlen(qkv: torch.Tensor, block_mask: BlockMask) -> torch.Tensor:
    """(tokens, 3, heads, head_dim) -> (tokens, heads, head_dim)."""
    q, k, v = qkv.permute(1, 2, 0, 3).unsqueeze(1).unbind(0)  # each (1, heads, tokens, head_dim)
    # Inside a compiled forward the forward's own compilation takes in the kernel.
    kernel = flex_attention if torch.compiler.is_compiling() else _kernel(qkv.is_cuda)
    out = kernel(q, k, v, block_mask=block_mask)
    return out[0].transpose(0, 1)
