"""The PyTorch attention path groups sequences so its work scales with the longest sequence, not the packed row."""

import torch
import torch.nn.functional as F

from bertforge.model.layout import make_layout


def _layout(lengths):
    cu = F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32)
    return make_layout(cu, sum(lengths), head_dim=64)


def test_many_short_sequences_never_form_a_row_wide_grid():
    layout = _layout([128] * 64)  # one 8192-token packed row of 64 documents
    groups, _ = layout.grids()
    assert max(g.gather.shape[1] for g in groups) == 128
    assert sum(g.gather.numel() for g in groups) == 8192


def test_padding_inside_groups_is_bounded():
    lengths = [1, 2, 3, 5, 9, 17, 40, 64, 100, 300, 1000, 2000, 4000, 8192]
    groups, ungroup = _layout(lengths).grids()
    slots = sum(g.gather.numel() for g in groups)
    assert slots <= 1.5 * sum(lengths)
    assert torch.equal(torch.sort(ungroup).values, torch.arange(sum(lengths)))


def test_positions_restart_in_every_sequence():
    layout = _layout([3, 1, 4])
    assert layout.positions.tolist() == [0, 1, 2, 0, 0, 1, 2, 3]
