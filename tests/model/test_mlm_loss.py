"""The fused, chunked MLM loss (model.mlm_loss_chunk): the plain loss's value, gradients and predictions, with at
most one chunk of logits alive at a time."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_config

from bertforge.errors import ConfigError
from bertforge.model import ModernBertForMaskedLM
from bertforge.model.mlm_loss import chunked_mlm_loss


def _batch(vocab: int, lengths=(40, 25, 50, 61)):
    gen = torch.Generator().manual_seed(0)
    flat = torch.randint(4, vocab, (sum(lengths),), generator=gen)
    cu = F.pad(torch.cumsum(torch.tensor(lengths), 0), (1, 0)).to(torch.int32)
    labels = flat.masked_fill(torch.rand(flat.shape, generator=gen) > 0.3, -100)
    return flat, cu, labels


def _step(chunk: int):
    torch.manual_seed(0)
    model = ModernBertForMaskedLM(dataclasses.replace(tiny_config(), mlm_loss_chunk=chunk))
    flat, cu, labels = _batch(model.config.vocab_size)
    out = model(flat, cu_seqlens=cu, labels=labels)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [7, 16, 10_000])  # many chunks, a ragged last one, and one chunk for all
def test_chunked_loss_has_the_plain_loss_gradients_and_predictions(chunk):
    plain, plain_grads = _step(0)
    fused, fused_grads = _step(chunk)
    assert fused.logits is None and fused.num_predictions == plain.num_predictions > 2 * 16
    torch.testing.assert_close(fused.loss, plain.loss, atol=1e-5, rtol=0)
    assert torch.equal(fused.predicted_ids(), plain.logits.argmax(-1))
    assert set(fused_grads) == set(plain_grads)
    for name, grad in plain_grads.items():  # the tied decoder weight gets its share through the embedding
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_chunked_loss_scales_with_the_incoming_gradient_and_skips_gradients_in_evaluation():
    torch.manual_seed(0)
    decoder = torch.nn.Linear(8, 50)
    hidden = torch.randn(23, 8, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    loss, _ = chunked_mlm_loss(hidden, decoder, targets, 5)
    (3.0 * loss).backward()
    fused = hidden.grad.clone(), decoder.weight.grad.clone(), decoder.bias.grad.clone()
    hidden.grad = None
    decoder.zero_grad()
    (3.0 * F.cross_entropy(decoder(hidden), targets)).backward()
    for got, expected in zip(fused, (hidden.grad, decoder.weight.grad, decoder.bias.grad)):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        evaluated, predictions = chunked_mlm_loss(hidden, decoder, targets, 5)
    torch.testing.assert_close(evaluated, loss.detach())
    assert torch.equal(predictions, decoder(hidden).argmax(-1))
    # No predicted position (a batch where masking chose nothing): a zero loss that still backpropagates.
    empty, none = chunked_mlm_loss(hidden[:0], decoder, targets[:0], 5)
    empty.backward()
    assert float(empty) == 0.0 and none.numel() == 0


def test_a_negative_chunk_is_refused_with_the_key():
    with pytest.raises(ConfigError, match="'mlm_loss_chunk' must be 0"):
        dataclasses.replace(tiny_config(), mlm_loss_chunk=-1)
