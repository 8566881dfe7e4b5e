"""Our model against transformers' independent ModernBERT implementation, in both directions."""

import pytest
import torch
from helpers import hf_reference_model, padded_batch
from transformers import AutoModelForMaskedLM

from bertforge.model import ModernBertForMaskedLM

# global-every-N of 1, 2 and 3; odd vocabularies; head sizes 16, 32 and 8; a window (16) shorter than the sequences.
CONFIGS = [dict(every=1, heads=4, vocab=1001), dict(every=2, heads=2, vocab=777), dict(every=3, heads=8, vocab=515)]
LENGTHS = [50, 23, 37, 9, 17]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"every{c['every']}-heads{c['heads']}-vocab{c['vocab']}")
def test_hf_to_ours_logits_match(tmp_path, cfg):
    hf = hf_reference_model(**cfg)
    hf.save_pretrained(tmp_path)
    ours = ModernBertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, mask = padded_batch(LENGTHS, cfg["vocab"])
    unmasked = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) > 0.3
    labels = ids.masked_fill(unmasked | ~mask, -100)
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask, labels=labels)
        mine = ours(ids, attention_mask=mask, labels=labels)
    assert mine.logits.shape == theirs.logits.shape
    torch.testing.assert_close(mine.logits[mask], theirs.logits[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"every{c['every']}-heads{c['heads']}-vocab{c['vocab']}")
def test_ours_to_hf_loads_cleanly_and_matches(tmp_path, cfg):
    from bertforge.model.hf_io import from_hf_config

    config = from_hf_config(hf_reference_model(**cfg).config.to_dict())
    torch.manual_seed(5)
    ours = ModernBertForMaskedLM(config).eval()
    with torch.no_grad():
        for name, param in ours.named_parameters():
            if param.dim() == 1:
                param.normal_(1.0 if "norm" in name else 0.0, 0.2)
    ours.save_pretrained(tmp_path)
    hf, info = AutoModelForMaskedLM.from_pretrained(tmp_path, output_loading_info=True, attn_implementation="sdpa",
                                                    reference_compile=False)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    assert "model.layers.0.attn_norm.weight" not in ours.state_dict()
    ids, mask = padded_batch(LENGTHS, cfg["vocab"], seed=7)
    with torch.no_grad():
        theirs = hf.eval()(input_ids=ids, attention_mask=mask).logits
        mine = ours(ids, attention_mask=mask).logits
    torch.testing.assert_close(mine[mask], theirs[mask], atol=1e-4, rtol=0)
    # The decoder is tied in the export too: transformers' decoder weight is its token embedding.
    assert hf.decoder.weight.data_ptr() == hf.model.embeddings.tok_embeddings.weight.data_ptr()


def test_round_trip_is_exact(tmp_path):
    hf_reference_model().save_pretrained(tmp_path / "hf")
    first = ModernBertForMaskedLM.from_pretrained(tmp_path / "hf")
    first.save_pretrained(tmp_path / "ours")
    second = ModernBertForMaskedLM.from_pretrained(tmp_path / "ours")
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert first.config == second.config


@pytest.mark.slow
def test_compiled_model_still_matches_transformers(tmp_path):
    """`compile: true` must not change the numbers: the torch.compile'd packed and padded paths against
    transformers (eager), logits and loss, with gradients flowing through the compiled graph.

    Compiled with ``aot_eager``: Dynamo's capture and AOT autograd, the parts that can change what is computed,
    without CPU inductor's C++ builds (4.4 min of CI on a slow day, and not the code a GPU run compiles to).
    The inductor-compiled training run is checked against an eager one in tests/train/test_train.py."""
    hf = hf_reference_model(**CONFIGS[2])
    hf.save_pretrained(tmp_path)
    ours = ModernBertForMaskedLM.from_pretrained(tmp_path).eval()
    compiled = torch.compile(ours, backend="aot_eager")
    ids, mask = padded_batch(LENGTHS, CONFIGS[2]["vocab"])
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(compiled(ids, attention_mask=mask).logits[mask], theirs[mask], atol=1e-4, rtol=0)
    flat = ids[mask]
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    labels = flat.clone()
    out = compiled(flat, cu_seqlens=cu, max_seqlen=max(LENGTHS), labels=labels)
    torch.testing.assert_close(out.logits, theirs[mask], atol=1e-4, rtol=0)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ours.parameters() if p.requires_grad)
