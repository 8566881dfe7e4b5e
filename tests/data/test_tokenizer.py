"""`bertforge tokenizer train`: byte-level BPE with ModernBERT's specials, loadable by transformers."""

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer


def test_trained_tokenizer_has_specials_and_padded_vocab(sample_data):
    tok = AutoTokenizer.from_pretrained(sample_data["tokenizer"])
    assert len(tok) % 64 == 0 and len(tok) >= 2048
    assert [tok.convert_tokens_to_ids(t) for t in ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]"]] == [0, 1, 2, 3, 4]
    ids = tok("def f(x):\n    return x ** 2")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids[1:-1]) == "def f(x):\n    return x ** 2"


@pytest.mark.command("tokenizer train")
def test_cli_trains_a_tokenizer(tmp_path, sample_data):
    bertforge = str(Path(sys.executable).with_name("bertforge"))
    result = subprocess.run([bertforge, "tokenizer", "train", str(sample_data["recipe"]), "--vocab-size", "500",
                             "--out", str(tmp_path / "tok")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(tok) == 512  # 500 padded up to a multiple of 64
    # Reading the corpus shows progress, as prep does: units, documents, megabytes and their rates.
    progress = result.stderr.replace("\r", "\n").splitlines()
    assert any(line.startswith("reading: 100%") and " docs, " in line and " MB/s" in line for line in progress), \
        result.stderr[-2000:]


def test_reading_with_workers_gives_the_texts_of_one_process_in_order(sample_data):
    """Worker processes read units ahead (the slow part of `tokenizer train`): the texts, their order and so the
    tokenizer are those of a single process."""
    from bertforge.data.recipe import load_recipe
    from bertforge.data.sources import recipe_texts

    one, two = (list(recipe_texts(load_recipe(sample_data["recipe"], [f"workers={n}"]))) for n in (1, 2))
    assert len(one) > 100 and one == two
