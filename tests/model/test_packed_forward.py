"""The unpadded (training) forward: packing, sequence boundaries, sliding windows and sparse prediction."""

import torch
import torch.nn.functional as F
from helpers import tiny_config

from bertforge.model import ModernBertForMaskedLM
from bertforge.model.attention import sliding_window_attention


def _packed(lengths, vocab, seed=0):
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(4, vocab, (n,), generator=gen) for n in lengths]
    cu = F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32)
    return seqs, torch.cat(seqs), cu


def test_packed_equals_each_sequence_alone():
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(tiny_config()).eval()
    lengths = [40, 7, 64, 1, 33, 18]  # several longer than the window (16), one of a single token
    seqs, flat, cu = _packed(lengths, model.config.vocab_size)
    with torch.no_grad():
        packed = model(flat, cu_seqlens=cu).logits
        for seq, start, end in zip(seqs, cu[:-1].tolist(), cu[1:].tolist()):
            alone = model(seq, cu_seqlens=torch.tensor([0, len(seq)], dtype=torch.int32)).logits
            torch.testing.assert_close(packed[start:end], alone, atol=1e-5, rtol=0)


def test_attention_never_crosses_a_sequence_boundary():
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(tiny_config()).eval()
    _, flat, cu = _packed([30, 30], model.config.vocab_size)
    changed = flat.clone()
    changed[30:] = torch.randint(4, model.config.vocab_size, (30,))
    with torch.no_grad():
        a = model(flat, cu_seqlens=cu).logits
        b = model(changed, cu_seqlens=cu).logits
    torch.testing.assert_close(a[:30], b[:30], atol=1e-6, rtol=0)
    assert not torch.allclose(a[30:], b[30:])


def _dense_window_reference(q, k, v, half_window):
    length = q.shape[-2]
    pos = torch.arange(length)
    allowed = (pos[:, None] - pos[None, :]).abs() <= half_window
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


def test_sliding_window_matches_dense_mask_at_8192_tokens():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8192, 16) for _ in range(3))
    ours = sliding_window_attention(q, k, v, torch.zeros(1, 8192, dtype=torch.long), half_window=64)
    torch.testing.assert_close(ours, _dense_window_reference(q, k, v, 64), atol=1e-5, rtol=0)


def test_sliding_window_respects_lengths_in_a_padded_group():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 100, 8) for _ in range(3))
    lengths = torch.tensor([100, 61])
    docs = torch.where(torch.arange(100)[None, :] < lengths[:, None], 0, -1)
    ours = sliding_window_attention(q, k, v, docs, half_window=8)
    for i, n in enumerate(lengths.tolist()):
        ref = _dense_window_reference(q[i:i + 1, :, :n], k[i:i + 1, :, :n], v[i:i + 1, :, :n], 8)
        torch.testing.assert_close(ours[i:i + 1, :, :n], ref, atol=1e-5, rtol=0)


def test_local_layer_sees_only_its_window():
    """Changing a token more than window/2 away changes nothing through a single local layer."""
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(tiny_config(num_hidden_layers=2, global_attn_every_n_layers=2)).eval()
    local = model.model.layers[1]
    assert local.attn.half_window == 8
    from bertforge.model.layout import make_layout

    x = torch.randn(60, 64)
    layout = make_layout(torch.tensor([0, 60], dtype=torch.int32), 60, model.config.head_dim)
    y = x.clone()
    y[40] += torch.randn(64)  # random, not uniform: LayerNorm would erase a uniform shift
    with torch.no_grad():
        a, b = local(x, layout), local(y, layout)
    far = [i for i in range(60) if abs(i - 40) > 8]
    near = [i for i in range(60) if abs(i - 40) <= 8 and i != 40]
    torch.testing.assert_close(a[far], b[far], atol=1e-6, rtol=0)
    assert all((a[i] - b[i]).abs().max() > 1e-5 for i in near)


def test_sparse_prediction_loss_equals_dense_masked_loss():
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(tiny_config()).eval()
    _, flat, cu = _packed([40, 25, 50], model.config.vocab_size)
    labels = flat.masked_fill(torch.rand(flat.shape) > 0.3, -100)
    with torch.no_grad():
        sparse = model(flat, cu_seqlens=cu, labels=labels)
        dense_logits = model(flat, cu_seqlens=cu).logits
    keep = labels != -100
    assert sparse.logits.shape == (int(keep.sum()), model.config.vocab_size)
    dense_loss = F.cross_entropy(dense_logits.view(-1, dense_logits.shape[-1]), labels, ignore_index=-100)
    torch.testing.assert_close(sparse.loss, dense_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(sparse.logits, dense_logits[keep], atol=1e-5, rtol=0)


def test_padded_path_equals_packed_path():
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(tiny_config()).eval()
    seqs, flat, cu = _packed([40, 25, 50], model.config.vocab_size)
    ids = torch.zeros(3, 50, dtype=torch.long)
    mask = torch.zeros(3, 50, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = True
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits
        packed = model(flat, cu_seqlens=cu).logits
    torch.testing.assert_close(padded[mask], packed, atol=1e-5, rtol=0)
    assert torch.count_nonzero(padded[~mask]) == 0


def test_a_few_optimizer_steps_lower_the_loss():
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(tiny_config()).train()
    _, flat, cu = _packed([40, 25, 50, 12], model.config.vocab_size)
    labels = flat.masked_fill(torch.rand(flat.shape) > 0.3, -100)
    inputs = flat.masked_fill(labels != -100, model.config.mask_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = model(inputs, cu_seqlens=cu, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_megatron_init_scales_output_projections_by_depth():
    torch.manual_seed(0)
    config = tiny_config(hidden_size=256, intermediate_size=512, num_hidden_layers=8)
    model = ModernBertForMaskedLM(config)
    out_std = 0.02 / (2 * 8) ** 0.5
    layer = model.model.layers[3]
    for weight, std in [(layer.attn.Wqkv.weight, 0.02), (layer.mlp.Wi.weight, 0.02),
                        (model.model.embeddings.tok_embeddings.weight, 0.02), (model.head.dense.weight, 0.02),
                        (layer.attn.Wo.weight, out_std), (layer.mlp.Wo.weight, out_std)]:
        assert abs(weight.std().item() - 0.986 * std) < 0.05 * std  # a normal cut at 3 std has std 0.986
        assert weight.abs().max().item() <= 3 * std + 1e-7
    assert torch.count_nonzero(model.decoder.bias) == 0
    assert model.decoder.weight is model.model.embeddings.tok_embeddings.weight
