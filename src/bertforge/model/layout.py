"""Everything about how sequences sit in a packed token stream, computed once per forward and shared by layers.

A packed micro-batch is a flat stream of tokens with ``cu_seqlens`` marking where each sequence starts. Every
layer needs the same derived facts (each token's position in its sequence, RoPE tables, and for the PyTorch
attention paths, how to regroup tokens by sequence or FlexAttention's block masks), so they are built here once
rather than in every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bertforge.model.flex import document_block_mask
from bertforge.model.rope import rotary_cos_sin

# Sequences are grouped for the PyTorch attention path by length, two groups per doubling, so that padding inside
# a group wastes at most ~41% of a group's slots while the number of attention calls per layer stays small.
_GROUPS_PER_OCTAVE = 2


@dataclass
class LengthGroup:
    """Sequences of similar length, gathered into a padded (n, max_len) grid for one SDPA call."""

    gather: torch.Tensor
    """(n, max_len) flat-token index of each grid slot; padding slots point at token 0 and are masked."""
    lengths: torch.Tensor
    """(n,) true length of each sequence."""
    valid: torch.Tensor
    """(n, max_len) True where a slot holds a real token."""
    all_full: bool
    """No padding in the grid, so the key mask can be skipped."""
    valid_slots: torch.Tensor
    """Flat indices of the real slots of the (n x max_len) grid, in grid order."""


@dataclass
class SequenceLayout:
    cu_seqlens: torch.Tensor
    """(sequences + 1,) int32 offsets of each sequence in the flat stream."""
    max_seqlen: int
    positions: torch.Tensor
    """(tokens,) position of each token inside its own sequence."""
    head_dim: int
    _rope: dict[float, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _block_masks: dict = field(default_factory=dict)
    _groups: list[LengthGroup] | None = None
    _ungroup: torch.Tensor | None = None

    def rope(self, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
        if theta not in self._rope:
            self._rope[theta] = rotary_cos_sin(self.positions, self.head_dim, theta)
        return self._rope[theta]

    def block_mask(self, half_window: int | None):
        """FlexAttention's block mask for global (None) or local layers, built on first use."""
        if half_window not in self._block_masks:
            self._block_masks[half_window] = document_block_mask(self.cu_seqlens, half_window)
        return self._block_masks[half_window]

    def length_groups(self) -> tuple[list[LengthGroup], torch.Tensor]:
        """Groups for the PyTorch path, and the permutation that puts grouped tokens back in stream order."""
        if self._groups is None:
            self._groups, self._ungroup = _group_by_length(self.cu_seqlens)
        return self._groups, self._ungroup


def make_layout(cu_seqlens: torch.Tensor, max_seqlen: int | None, head_dim: int) -> SequenceLayout:
    cu_seqlens = cu_seqlens.to(torch.int32)
    total = int(cu_seqlens[-1]) if cu_seqlens.device.type == "cpu" else None
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    if max_seqlen is None:
        max_seqlen = int(lengths.max())
    starts = torch.repeat_interleave(cu_seqlens[:-1].long(), lengths.long(), output_size=total)
    positions = torch.arange(starts.shape[0], device=cu_seqlens.device) - starts
    return SequenceLayout(cu_seqlens=cu_seqlens, max_seqlen=int(max_seqlen), positions=positions, head_dim=head_dim)


def _group_by_length(cu_seqlens: torch.Tensor) -> tuple[list[LengthGroup], torch.Tensor]:
    device = cu_seqlens.device
    offsets = cu_seqlens.tolist()
    lengths = [b - a for a, b in zip(offsets[:-1], offsets[1:])]
    buckets: dict[int, list[int]] = {}
    for seq, length in enumerate(lengths):
        buckets.setdefault(math.floor(math.log2(max(length, 1)) * _GROUPS_PER_OCTAVE), []).append(seq)
    groups, order = [], []
    for key in sorted(buckets, reverse=True):
        seqs = buckets[key]
        starts = torch.tensor([offsets[s] for s in seqs], device=device)
        lens = torch.tensor([lengths[s] for s in seqs], device=device)
        width = max(lengths[s] for s in seqs)
        slots = torch.arange(width, device=device)
        valid = slots[None, :] < lens[:, None]
        gather = torch.where(valid, starts[:, None] + slots[None, :], torch.zeros_like(valid, dtype=torch.long))
        groups.append(LengthGroup(gather=gather, lengths=lens, valid=valid,
                                  all_full=all(lengths[s] == width for s in seqs),
                                  valid_slots=valid.reshape(-1).nonzero().squeeze(1)))
        order.append(gather[valid])
    grouped_order = torch.cat(order)
    ungroup = torch.empty_like(grouped_order)
    ungroup[grouped_order] = torch.arange(grouped_order.shape[0], device=device)
    return groups, ungroup
