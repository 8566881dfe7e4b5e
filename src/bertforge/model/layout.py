"""Everything about how sequences sit in a packed token stream, computed once per forward and shared by layers.

A packed micro-batch is a flat stream of tokens with ``cu_seqlens`` marking where each sequence starts. Every
layer needs the same derived facts (each token's sequence and its position in it, RoPE tables, and for the
PyTorch attention paths, how to regroup tokens into padded grids or FlexAttention's block masks), so they are
built here once rather than in every layer.

Nothing here reads a tensor's value back to the host on the way to the block masks, the rows grid and the
positions, so a ``torch.compile``'d forward stays one graph (docs/model.md, "Compiling"): the token count comes
from the stream's shape, each token's sequence from a ``searchsorted`` over ``cu_seqlens``. Only the eager SDPA
path's length groups (which choose their grids by the sequences' lengths) and ``max_seqlen`` for flash-attn
(when the caller did not pass it) read values back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from bertforge.model.flex import document_block_mask
from bertforge.model.rope import rotary_cos_sin

# Sequences are grouped for the eager PyTorch attention path by length, two groups per doubling, so that padding
# inside a group wastes at most ~41% of a group's slots while the number of attention calls per layer stays small.
_GROUPS_PER_OCTAVE = 2


@dataclass
class Grid:
    """Tokens gathered into a padded (n, width) grid for SDPA calls: a length group (one sequence a row) or the
    packed rows (several sequences a row, kept apart by ``docs``)."""

    gather: torch.Tensor
    """(n, width) flat-token index of each grid slot; padding slots point at token 0."""
    docs: torch.Tensor
    """(n, width) the sequence each slot holds (any number that differs between sequences of a row); -1 at
    padding."""
    valid_slots: torch.Tensor
    """Flat indices of the real slots of the (n x width) grid: the tokens, in grid order."""
    one_sequence_a_row: bool
    """Each row holds one sequence, so a key mask (or none) is enough: no sequence-to-sequence mask is built."""
    all_full: bool = False
    """One sequence a row and no padding: no mask at all."""

    @property
    def valid(self) -> torch.Tensor:
        return self.docs >= 0


@dataclass
class SequenceLayout:
    cu_seqlens: torch.Tensor
    """(sequences + 1,) int32 offsets of each sequence in the flat stream."""
    sequence_of_token: torch.Tensor
    """(tokens,) which sequence each token belongs to."""
    positions: torch.Tensor
    """(tokens,) position of each token inside its own sequence."""
    head_dim: int
    given_max_seqlen: int | None = None
    row_offsets: torch.Tensor | None = None
    """(rows + 1,) offsets of the packed rows the loader built (each row at most ``row_len`` tokens), or None."""
    row_len: int | None = None
    _rope: dict[float, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _block_masks: dict = field(default_factory=dict)
    _grids: tuple[list[Grid], torch.Tensor | None] | None = None

    @property
    def max_seqlen(self) -> int:
        """The longest sequence, or a bound on it (flash-attn's argument): as the caller gave it, else the rows'
        length, else read from ``cu_seqlens``."""
        if self.given_max_seqlen is None:
            self.given_max_seqlen = self.row_len or int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max())
        return self.given_max_seqlen

    def rope(self, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
        if theta not in self._rope:
            self._rope[theta] = rotary_cos_sin(self.positions, self.head_dim, theta)
        return self._rope[theta]

    def block_mask(self, half_window: int | None):
        """FlexAttention's block mask for global (None) or local layers, built on first use."""
        if half_window not in self._block_masks:
            self._block_masks[half_window] = document_block_mask(self.sequence_of_token, half_window)
        return self._block_masks[half_window]

    def grids(self) -> tuple[list[Grid], torch.Tensor | None]:
        """Grids for the SDPA path, and the permutation that puts the grids' tokens back in stream order (None
        when they already are).

        Compiled, with the loader's rows known: the rows themselves, one grid whose shape is fixed by the
        micro-batch (rows x row_len), whatever the documents. Otherwise groups of similar length, each in its own
        grid: less padding and no sequence-to-sequence masks, but their number and shapes follow the documents,
        which a compiled graph cannot."""
        if self._grids is None:
            if self.row_offsets is not None and torch.compiler.is_compiling():
                self._grids = [_rows_grid(self.row_offsets, self.row_len, self.sequence_of_token)], None
            else:
                self._grids = _group_by_length(self.cu_seqlens)
        return self._grids


def make_layout(cu_seqlens: torch.Tensor, num_tokens: int, head_dim: int, max_seqlen: int | None = None,
                row_offsets: torch.Tensor | None = None, row_len: int | None = None) -> SequenceLayout:
    """The layout of a stream of ``num_tokens`` tokens (the stream's own length, symbolic when compiled)."""
    cu_seqlens = cu_seqlens.to(torch.int32)
    tokens = torch.arange(num_tokens, device=cu_seqlens.device, dtype=torch.int32)
    sequence = torch.searchsorted(cu_seqlens[1:], tokens, right=True)
    positions = tokens - cu_seqlens.index_select(0, sequence)
    return SequenceLayout(cu_seqlens=cu_seqlens, sequence_of_token=sequence, positions=positions,
                          head_dim=head_dim, given_max_seqlen=max_seqlen, row_offsets=row_offsets, row_len=row_len)


def _rows_grid(row_offsets: torch.Tensor, row_len: int, sequence_of_token: torch.Tensor) -> Grid:
    """The packed rows as one (rows, row_len) grid; built from tensors alone."""
    device = sequence_of_token.device
    starts, lengths = row_offsets[:-1].long(), (row_offsets[1:] - row_offsets[:-1]).long()
    slots = torch.arange(row_len, device=device)
    valid = slots[None, :] < lengths[:, None]
    gather = torch.where(valid, starts[:, None] + slots[None, :], 0)
    docs = torch.where(valid, sequence_of_token.index_select(0, gather.reshape(-1)).view_as(gather).long(), -1)
    tokens = torch.arange(sequence_of_token.shape[0], device=device)
    row = torch.searchsorted(row_offsets[1:].long(), tokens, right=True)
    valid_slots = row * row_len + tokens - starts.index_select(0, row)
    return Grid(gather=gather, docs=docs, valid_slots=valid_slots, one_sequence_a_row=False)


def _group_by_length(cu_seqlens: torch.Tensor) -> tuple[list[Grid], torch.Tensor]:
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
        groups.append(Grid(gather=gather, docs=valid.long() - 1, valid_slots=valid.reshape(-1).nonzero().squeeze(1),
                           one_sequence_a_row=True, all_full=all(lengths[s] == width for s in seqs)))
        order.append(gather[valid])
    grouped_order = torch.cat(order)
    ungroup = torch.empty_like(grouped_order)
    ungroup[grouped_order] = torch.arange(grouped_order.shape[0], device=device)
    return groups, ungroup
