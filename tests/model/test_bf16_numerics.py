"""bf16 autocast, the precision ModernBERT trains in, stays close to float32 on the same batch (CPU).

The tolerances are stated here, measured on the tiny preset after a few optimizer steps (so the weights are no
longer at their small init): the loss within 0.2% of float32's, the logits within 2% of their own spread on
average and 10% at worst. bf16 keeps 8 bits of mantissa (a relative step of 0.4%), and every matmul rounds its
inputs to it, so tighter bounds would fail on rounding alone; a kernel that mishandled bf16 (wrong accumulation
type, a mask lost in a cast) misses them by orders of magnitude.
"""

import pytest
import torch
import torch.nn.functional as F

from bertforge.model import ModernBertForMaskedLM, load_model_config


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    config = load_model_config("tiny")
    model = ModernBertForMaskedLM(config)
    lengths = [300, 17, 129, 500, 64]
    flat = torch.randint(5, config.vocab_size, (sum(lengths),))
    labels = torch.where(torch.rand(flat.shape) < 0.3, flat, -100)
    batch = {"input_ids": flat, "labels": labels, "max_seqlen": max(lengths),
             "cu_seqlens": F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(8):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), batch


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_bf16_autocast_stays_within_stated_tolerance_of_float32(trained, backend):
    model, batch = trained
    for module in model.modules():
        if hasattr(module, "backend"):
            module.backend = backend
    with torch.no_grad():
        full = model(**batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(**batch)
    assert half.logits.dtype == torch.bfloat16  # autocast really ran the model in bf16
    assert full.loss.item() < 8.5  # the steps above moved the model off its init (ln 8192 = 9.01)
    assert abs(half.loss.item() - full.loss.item()) <= 2e-3 * full.loss.item()
    error = (half.logits.float() - full.logits).abs()
    spread = full.logits.std().item()
    assert error.mean().item() <= 0.02 * spread
    assert error.max().item() <= 0.10 * spread
