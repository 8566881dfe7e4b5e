"""Attention over a packed token stream that never crosses a sequence boundary.

Three backends give the same numbers: FlashAttention-2's varlen kernel (CUDA, when installed), PyTorch's
FlexAttention with a document and window block mask (compiled on CUDA, no extension; see flex.py), and a pure
PyTorch SDPA path. The SDPA path regroups sequences of similar length into small padded grids and runs SDPA on
each, so its memory grows with the longest sequence rather than with the packed row; local layers use a blocked
sliding window whose cost is linear in sequence length, so 8192-token sequences are cheap on CPU too. Compiled,
it attends over the loader's packed rows instead (one grid whose shape the batch does not change, with a mask
that keeps each sequence to itself), since a graph cannot follow groups that change with every batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bertforge.model.flex import flex_varlen
from bertforge.model.layout import Grid, SequenceLayout

try:  # the optional GPU extra (`pip install -e .[gpu]`); imported here, never inside a (compiled) forward
    from flash_attn import flash_attn_varlen_qkvpacked_func as flash_varlen
except ImportError:
    flash_varlen = None


def resolve_backend(requested: str, qkv: torch.Tensor, attention_dropout: float = 0.0) -> str:
    """The backend that will actually run: 'auto' takes flash where it can run, else flex on CUDA (which has no
    attention dropout), else sdpa. A backend asked for by name where it cannot run is an error, not a fallback."""
    usable = flash_varlen is not None and qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16)
    if requested == "flash" and not usable:
        raise RuntimeError(
            "attention_backend 'flash' needs flash-attn installed (`pip install -e .[gpu]`), a CUDA device and "
            f"fp16/bf16 activations (got device {qkv.device}, dtype {qkv.dtype}); use 'auto', 'flex' or 'sdpa'")
    if requested != "auto":
        return requested
    if usable:
        return "flash"
    return "flex" if qkv.is_cuda and attention_dropout == 0 else "sdpa"


def varlen_attention(qkv: torch.Tensor, layout: SequenceLayout, half_window: int | None, dropout_p: float,
                     backend: str = "sdpa") -> torch.Tensor:
    """(tokens, 3, heads, head_dim) -> (tokens, heads, head_dim); ``half_window`` None means global attention.
    ``backend`` is one that resolve_backend returned."""
    if backend == "flash":
        window = (half_window, half_window) if half_window is not None else (-1, -1)
        return flash_varlen(qkv, layout.cu_seqlens, layout.max_seqlen, dropout_p=dropout_p, window_size=window)
    if backend == "flex":
        return flex_varlen(qkv, layout.block_mask(half_window))
    return _sdpa_varlen(qkv, layout, half_window, dropout_p)


def _sdpa_varlen(qkv: torch.Tensor, layout: SequenceLayout, half_window: int | None,
                 dropout_p: float) -> torch.Tensor:
    grids, ungroup = layout.grids()
    outputs = []
    for grid in grids:
        # index_select, whose backward is an index_add, instead of advanced indexing (a much slower index_put)
        n, width = grid.gather.shape
        cells = qkv.index_select(0, grid.gather.reshape(-1)).view(n, width, *qkv.shape[1:])
        q, k, v = cells.permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, width, head_dim)
        if half_window is None or width <= half_window + 1:
            mask = _sequence_mask(grid, None)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        elif width <= _DENSE_BAND_WIDTH * half_window:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=_sequence_mask(grid, half_window),
                                                 dropout_p=dropout_p)
        else:
            out = sliding_window_attention(q, k, v, grid.docs, half_window, dropout_p)
        outputs.append(out.transpose(1, 2).reshape(n * width, *out.shape[1:2], out.shape[-1])
                       .index_select(0, grid.valid_slots))
    out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    return out if ungroup is None else out.index_select(0, ungroup)


# Up to this many half-windows wide, a local layer's grid is cheaper as one dense call with a band mask (width^2
# scores) than as blocks of three half-windows (3 x half_window x width scores, plus the unfold and its backward).
_DENSE_BAND_WIDTH = 3


def _sequence_mask(grid: Grid, half_window: int | None) -> torch.Tensor | None:
    """(n, 1, width, width) or broadcastable: keys in the query's own sequence (and within ``half_window`` of
    it); each query sees itself too, so padding queries' (discarded) rows stay finite. A grid of one sequence a
    row needs no mask when full, and only a key mask for global layers."""
    if half_window is None and grid.one_sequence_a_row:
        return None if grid.all_full else grid.valid[:, None, None, :]
    docs = grid.docs
    width = docs.shape[1]
    pos = torch.arange(width, device=docs.device)
    distance = (pos[:, None] - pos[None, :]).abs()
    allowed = (docs[:, :, None] == docs[:, None, :]) & (docs[:, None, :] >= 0)
    if half_window is not None:
        allowed &= (distance <= half_window)[None]
    return (allowed | (distance == 0)[None])[:, None]


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, docs: torch.Tensor,
                             half_window: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Each query sees keys within ``half_window`` positions and of its own sequence: ``docs`` (n, width) says
    which sequence each slot of a row holds (-1: padding).

    Queries are cut into blocks of ``half_window``; block b needs only key blocks b-1, b and b+1, so scores are
    (tokens x 3 x half_window) instead of (tokens x tokens). Inputs and output are (n, heads, width, head_dim).
    """
    n, heads, width, dim = q.shape
    w = half_window
    blocks = -(-width // w)
    tail = blocks * w - width
    # No pad of zero width: torch 2.7 compiles one as contiguous, while eager keeps q's strides, and the view after
    # it then fails in the compiled graph.
    qb = (F.pad(q, (0, 0, 0, tail)) if tail else q).reshape(n, heads, blocks, w, dim)
    kb = F.pad(k, (0, 0, w, tail + w)).unfold(2, 3 * w, w).transpose(-1, -2)
    vb = F.pad(v, (0, 0, w, tail + w)).unfold(2, 3 * w, w).transpose(-1, -2)
    device = q.device
    offset = torch.arange(3 * w, device=device)[None, :] - w - torch.arange(w, device=device)[:, None]
    query_docs = F.pad(docs, (0, tail), value=-1).view(n, blocks, w)
    key_docs = F.pad(docs, (w, tail + w), value=-1).unfold(1, 3 * w, w)  # (n, blocks, 3w)
    same = (query_docs[..., :, None] == key_docs[..., None, :]) & (key_docs[..., None, :] >= 0)
    # Padding queries may see nothing real; letting every query see itself keeps their (discarded) rows finite.
    mask = (same & (offset.abs() <= w)) | (offset == 0)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask[:, None], dropout_p=dropout_p)
    return out.reshape(n, heads, blocks * w, dim)[:, :, :width]
