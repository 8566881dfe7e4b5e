"""Our export used the way users use a ModernBERT: the tokenizer's output straight into transformers' Auto
classes and pipelines, sentence-transformers and PyLate, each checked against our own model's numbers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))
TEXTS = ["def add(a, b):\n    return a + b", "The integral of a sum is the sum of the integrals.",
         "Return a sorted list of the items."]


@pytest.fixture(scope="module")
def export(short_run) -> Path:
    """The HuggingFace directory a real `bertforge train` run exports at its end (rows of 256 tokens)."""
    return short_run / "hf"


def our_hidden(export: Path, batch: dict) -> torch.Tensor:
    """Our encoder's final hidden states of the real tokens of a padded batch, as one flat (tokens, hidden)."""
    from bertforge.model import ModernBertForMaskedLM
    from bertforge.model.modernbert import unpad

    ours = ModernBertForMaskedLM.from_pretrained(export).eval()
    ids, cu_seqlens, longest = unpad(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():
        return ours.model(ids, cu_seqlens, longest)


def test_tokenizer_configuration_matches_the_released_modernbert(export):
    from transformers import AutoTokenizer

    settings = json.loads((export / "tokenizer_config.json").read_text())
    assert settings["model_input_names"] == ["input_ids", "attention_mask"]
    assert settings["model_max_length"] == 256  # the run's rows: the context the model was trained at
    config = json.loads((export / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(export)
    for name in ("cls", "sep", "pad", "mask"):
        assert getattr(tokenizer, f"{name}_token_id") == config[f"{name}_token_id"], name
    assert set(tokenizer("hello world")) == {"input_ids", "attention_mask"}


def test_automodel_takes_the_tokenizer_output_and_gives_our_hidden_states(export):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(export)
    model = AutoModel.from_pretrained(export).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    torch.testing.assert_close(hidden[batch["attention_mask"].bool()], our_hidden(export, batch), atol=1e-5, rtol=0)


def test_masked_lm_and_the_fill_mask_and_feature_extraction_pipelines(export):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    from bertforge.model import ModernBertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(export)
    text = f"def add(a, b):\n    {tokenizer.mask_token} a + b"
    batch = tokenizer(text, return_tensors="pt")
    spot = int((batch["input_ids"][0] == tokenizer.mask_token_id).nonzero())
    ours = ModernBertForMaskedLM.from_pretrained(export).eval()
    with torch.no_grad():
        expected = ours(batch["input_ids"]).logits[0, spot]
        hf = AutoModelForMaskedLM.from_pretrained(export).eval()(**batch).logits[0, spot]
    torch.testing.assert_close(hf, expected, atol=1e-4, rtol=0)
    guesses = pipeline("fill-mask", model=str(export), top_k=3)(text)
    assert [g["token"] for g in guesses] == expected.topk(3).indices.tolist()
    features = pipeline("feature-extraction", model=str(export))(TEXTS[0], return_tensors=True)
    single = tokenizer([TEXTS[0]], return_tensors="pt")
    torch.testing.assert_close(features[0], our_hidden(export, single), atol=1e-5, rtol=0)


def test_sentence_transformers_mean_pooling_is_the_mean_of_our_hidden_states(export):
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer

    transformer = models.Transformer(str(export))
    embedder = SentenceTransformer(modules=[transformer, models.Pooling(transformer.get_word_embedding_dimension(),
                                                                        "mean")], device="cpu")
    assert embedder.max_seq_length == 256
    embeddings = torch.from_numpy(embedder.encode(TEXTS))
    batch = AutoTokenizer.from_pretrained(export)(TEXTS, padding=True, return_tensors="pt")
    flat = our_hidden(export, batch)
    lengths = batch["attention_mask"].sum(1).tolist()
    expected = torch.stack([part.mean(0) for part in flat.split(lengths)])
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=0)


def test_pylate_builds_a_colbert_model_from_the_export(export):
    from pylate import models

    colbert = models.ColBERT(model_name_or_path=str(export), device="cpu")
    documents = colbert.encode(TEXTS, is_query=False)
    queries = colbert.encode(["sum of two numbers"], is_query=True)
    assert len(documents) == 3 and all(d.ndim == 2 and d.shape[1] == 128 for d in documents)
    assert all(torch.isfinite(torch.as_tensor(d)).all() for d in [*documents, *queries])
    assert documents[0].shape[0] != documents[1].shape[0]  # one vector per token, not one per text


def test_the_model_card_snippet_runs(export, monkeypatch):
    from bertforge.export.card import usage_snippet

    monkeypatch.chdir(export.parent)
    scope: dict = {}
    exec(usage_snippet(export.name), scope)  # noqa: S102 - the card's own code, as a user would paste it
    assert scope["hidden"].shape[-1] == 256 and scope["embeddings"].shape == (2, 256)
    assert len(scope["guesses"]) == 5


@pytest.mark.slow
def test_fix_tokenizer_repairs_an_export_of_an_earlier_version(export, tmp_path):
    """An export whose tokenizer configuration lists no model_input_names (as ours did) fails in AutoModel; `bertforge
    export DIR --fix-tokenizer` rewrites it in place and AutoModel takes it."""
    from transformers import AutoModel, AutoTokenizer

    old = tmp_path / "old"
    shutil.copytree(export, old)
    settings = json.loads((old / "tokenizer_config.json").read_text())
    del settings["model_input_names"]
    settings["model_max_length"] = 1_000_000
    (old / "tokenizer_config.json").write_text(json.dumps(settings))
    model = AutoModel.from_pretrained(old)
    with pytest.raises(TypeError, match="token_type_ids"):
        model(**AutoTokenizer.from_pretrained(old)("hello world", return_tensors="pt"))
    result = subprocess.run([BERTFORGE, "export", str(old), "--fix-tokenizer"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "rewrote the tokenizer configuration" in result.stdout, result.stderr
    fixed = AutoTokenizer.from_pretrained(old)
    assert fixed.model_max_length == 8192  # at most the model's positions
    inputs = fixed("hello world", return_tensors="pt")
    assert model(**inputs).last_hidden_state.shape == (1, inputs["input_ids"].shape[1], 256)
    assert sorted(p.name for p in old.iterdir()) == sorted(p.name for p in export.iterdir())
