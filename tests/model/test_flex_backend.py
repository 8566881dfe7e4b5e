"""The FlexAttention backend: its block masks are torch's own, and its logits are the sdpa backend's.

On CPU FlexAttention runs torch's reference implementation (this torch cannot compile its CPU kernel for a mask
that reads a tensor), which applies the token-level mask everywhere; the block tables that the compiled kernel
relies on are therefore checked on their own, against ``create_block_mask``. On CUDA the compiled kernel runs.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config
from torch.nn.attention.flex_attention import create_block_mask

from bertforge.errors import ConfigError
from bertforge.model import ModernBertForMaskedLM
from bertforge.model.attention import resolve_backend
from bertforge.model.flex import document_block_mask

# Lengths around the 128-token tile and the 16-token window of tiny_config: tiles inside one document, tiles
# shared by several short documents, and a stream whose end falls inside a tile.
LENGTHS = [300, 17, 129, 1, 256, 40, 500]


def _cu(lengths, device="cpu"):
    return F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32).to(device)


@pytest.mark.parametrize("half_window", [None, 8, 64, 200])
@pytest.mark.parametrize("lengths", [LENGTHS, [1024], [128, 128, 256], [5] * 60])
def test_block_tables_match_torch_create_block_mask(lengths, half_window):
    doc = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    pos = torch.arange(doc.shape[0])

    def reference(b, h, q, kv):
        same = doc[q] == doc[kv]
        return same if half_window is None else same & ((pos[q] - pos[kv]).abs() <= half_window)

    total = sum(lengths)
    expected = create_block_mask(reference, None, None, total, total, device="cpu")
    ours = document_block_mask(doc, half_window)

    def tables(mask):
        partial = torch.zeros(mask.kv_num_blocks.shape[-1], mask.kv_num_blocks.shape[-1], dtype=torch.bool)
        full = partial.clone()
        for table, counts, indices in ((partial, mask.kv_num_blocks, mask.kv_indices),
                                       (full, mask.full_kv_num_blocks, mask.full_kv_indices)):
            for row in range(table.shape[0]):
                table[row, indices[0, 0, row, :counts[0, 0, row]].long()] = True
        return partial, full

    ours_partial, ours_full = tables(ours)
    want_partial, want_full = tables(expected)
    assert torch.equal(ours_full, want_full)
    assert torch.equal(ours_partial, want_partial)
    # The token-level rule the kernel applies inside partial tiles is the reference's too.
    q = torch.arange(total)[:, None]
    kv = torch.arange(total)[None, :]
    assert torch.equal(ours.mask_mod(0, 0, q, kv), reference(0, 0, q, kv))


def _logits(backend, lengths, device, dtype=None, **overrides):
    flat = torch.randint(4, 515, (sum(lengths),), generator=torch.Generator().manual_seed(1)).to(device)
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(tiny_config(attention_backend=backend, **overrides)).to(device).eval()
    with torch.no_grad(), torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        return model(flat, cu_seqlens=_cu(lengths, device), max_seqlen=max(lengths)).logits.float()


@pytest.mark.parametrize("local_attention", [16, 128])
def test_flex_logits_equal_sdpa_logits_in_float32_on_cpu(local_attention):
    flex = _logits("flex", LENGTHS, "cpu", local_attention=local_attention)
    sdpa = _logits("sdpa", LENGTHS, "cpu", local_attention=local_attention)
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


def test_flex_gradients_equal_sdpa_gradients():
    """On CUDA through the compiled kernel; on CPU through torch's reference backward where this torch has one
    (2.7 does; newer releases refuse it, and the test says so)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lengths = [200, 33, 90]
    flat = torch.randint(4, 515, (sum(lengths),), generator=torch.Generator().manual_seed(2)).to(device)
    labels = torch.where(torch.rand(flat.shape, generator=torch.Generator().manual_seed(3)).to(device) < 0.3, flat,
                         -100)
    grads = {}
    for backend in ("flex", "sdpa"):
        torch.manual_seed(0)
        model = ModernBertForMaskedLM(tiny_config(attention_backend=backend)).to(device)
        loss = model(flat, labels=labels, cu_seqlens=_cu(lengths, device), max_seqlen=max(lengths)).loss
        try:
            loss.backward()
        except NotImplementedError as error:
            pytest.skip(f"torch {torch.__version__} has no FlexAttention backward on {device}: {error}")
        grads[backend] = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in grads["sdpa"].items():
        torch.testing.assert_close(grads["flex"][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled FlexAttention kernel needs a CUDA device; "
                    "on CPU the tests above check the same masks through torch's reference implementation")
def test_compiled_flex_equals_sdpa_on_cuda():
    lengths = LENGTHS + [1500, 3000]
    flex = _logits("flex", lengths, "cuda", local_attention=128)
    sdpa = _logits("sdpa", lengths, "cuda", local_attention=128)
    torch.testing.assert_close(flex, sdpa, atol=1e-4, rtol=1e-4)
    flex_bf16 = _logits("flex", lengths, "cuda", torch.bfloat16, local_attention=128)
    sdpa_bf16 = _logits("sdpa", lengths, "cuda", torch.bfloat16, local_attention=128)
    torch.testing.assert_close(flex_bf16, sdpa_bf16, atol=5e-2, rtol=5e-2)


def test_auto_picks_flex_only_on_cuda_without_flash_and_without_attention_dropout():
    cpu = torch.zeros(4, 3, 2, 8)
    assert resolve_backend("auto", cpu) == "sdpa"
    assert resolve_backend("flex", cpu) == "flex"  # asked for by name: runs (torch's reference path on CPU)
    meta_cuda = torch.empty(4, 3, 2, 8, device="meta")  # is_cuda False: auto stays on sdpa
    assert resolve_backend("auto", meta_cuda) == "sdpa"
    if torch.cuda.is_available():
        from bertforge.model.attention import flash_varlen

        cuda = torch.zeros(4, 3, 2, 8, device="cuda", dtype=torch.bfloat16)
        assert resolve_backend("auto", cuda) == ("flash" if flash_varlen else "flex")
        assert resolve_backend("auto", cuda, attention_dropout=0.1) in ("flash", "sdpa")


def test_flex_with_attention_dropout_is_a_config_error():
    with pytest.raises(ConfigError, match="attention_backend 'flex' has no dropout"):
        tiny_config(attention_backend="flex", attention_dropout=0.1)
