"""Attention over a packed token stream that never crosses a sequence boundary.

Three backends give the same numbers: FlashAttention-2's varlen kernel (CUDA, when installed), PyTorch's
FlexAttention with a document and window block mask (compiled on CUDA, no extension; see flex.py), and a pure
PyTorch SDPA path. The SDPA path regroups sequences of similar length into small padded grids and runs SDPA on
each, so its memory grows with the longest sequence rather than with the packed row; local layers use a blocked
sliding window whose cost is linear in sequence length, so 8192-token sequences are cheap on CPU too.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from bertforge.model.flex import flex_varlen
from bertforge.model.layout import SequenceLayout


@functools.cache
def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_qkvpacked_func  # noqa: PLC0415 (optional extra, for the flash backend only)
    except ImportError:
        return None
    return flash_attn_varlen_qkvpacked_func


def resolve_backend(requested: str, qkv: torch.Tensor, attention_dropout: float = 0.0) -> str:
    """The backend that will actually run: 'auto' takes flash where it can run, else flex on CUDA (which has no
    attention dropout), else sdpa. A backend asked for by name where it cannot run is an error, not a fallback."""
    usable = _flash_varlen() is not None and qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16)
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
        return _flash_varlen()(qkv, layout.cu_seqlens, layout.max_seqlen, dropout_p=dropout_p, window_size=window)
    if backend == "flex":
        return flex_varlen(qkv, layout.block_mask(half_window))
    return _sdpa_varlen(qkv, layout, half_window, dropout_p)


def _sdpa_varlen(qkv: torch.Tensor, layout: SequenceLayout, half_window: int | None,
                 dropout_p: float) -> torch.Tensor:
    groups, ungroup = layout.length_groups()
    outputs = []
    for group in groups:
        # index_select, whose backward is an index_add, instead of advanced indexing (a much slower index_put)
        n, width = group.gather.shape
        grid = qkv.index_select(0, group.gather.reshape(-1)).view(n, width, *qkv.shape[1:])
        q, k, v = grid.permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, width, head_dim)
        if half_window is None or width <= half_window + 1:
            mask = None if group.all_full else group.valid[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        elif width <= _DENSE_BAND_WIDTH * half_window:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=_band_mask(group.valid, half_window),
                                                 dropout_p=dropout_p)
        else:
            out = sliding_window_attention(q, k, v, group.lengths, half_window, dropout_p)
        outputs.append(out.transpose(1, 2).reshape(n * width, *out.shape[1:2], out.shape[-1])
                       .index_select(0, group.valid_slots))
    return torch.cat(outputs).index_select(0, ungroup)


# Up to this many half-windows wide, a local layer's grid is cheaper as one dense call with a band mask (width^2
# scores) than as blocks of three half-windows (3 x half_window x width scores, plus the unfold and its backward).
_DENSE_BAND_WIDTH = 3


def _band_mask(valid: torch.Tensor, half_window: int) -> torch.Tensor:
    """(n, 1, width, width): keys within ``half_window`` of the query and inside the sequence; each query sees
    itself too, so padding queries' (discarded) rows stay finite."""
    width = valid.shape[1]
    pos = torch.arange(width, device=valid.device)
    distance = (pos[:, None] - pos[None, :]).abs()
    return (((distance <= half_window)[None] & valid[:, None, :]) | (distance == 0)[None])[:, None]


def sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor,
                             half_window: int, dropout_p: float = 0.0) -> torch.Tensor:
    """Each query sees keys within ``half_window`` positions and inside its sequence's ``lengths``.

    Queries are cut into blocks of ``half_window``; block b needs only key blocks b-1, b and b+1, so scores are
    (tokens x 3 x half_window) instead of (tokens x tokens). Inputs and output are (n, heads, width, head_dim).
    """
    n, heads, width, dim = q.shape
    w = half_window
    blocks = -(-width // w)
    tail = blocks * w - width
    qb = F.pad(q, (0, 0, 0, tail)).view(n, heads, blocks, w, dim)
    kb = F.pad(k, (0, 0, w, tail + w)).unfold(2, 3 * w, w).transpose(-1, -2)
    vb = F.pad(v, (0, 0, w, tail + w)).unfold(2, 3 * w, w).transpose(-1, -2)
    device = q.device
    offset = torch.arange(3 * w, device=device)[None, :] - w - torch.arange(w, device=device)[:, None]
    key_pos = torch.arange(blocks, device=device)[:, None] * w - w + torch.arange(3 * w, device=device)[None, :]
    key_ok = (key_pos >= 0) & (key_pos[None] < lengths[:, None, None])  # (n, blocks, 3w)
    # Padding queries may see nothing real; letting every query see itself keeps their (discarded) rows finite.
    mask = ((offset.abs() <= w) & key_ok[:, :, None, :]) | (offset == 0)
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask[:, None], dropout_p=dropout_p)
    return out.reshape(n, heads, blocks * w, dim)[:, :, :width]
