"""`bertforge average`: checkpoint averaging, exact, bounded to models that can be averaged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def bertforge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFORGE, *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(short_run) -> Path:
    """A 12-step run with checkpoints at batches 4, 8 and 12."""
    return short_run / "run"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from bertforge.checkpoint.read import load_masked_lm

    return load_masked_lm(path).state_dict()


def test_the_average_of_one_checkpoint_is_that_checkpoint(run, tmp_path):
    from transformers import AutoModelForMaskedLM

    result = bertforge("average", str(run / "ep0-ba8-rank0.pt"), str(tmp_path / "one"))
    assert result.returncode == 0 and "averaged 1 model(s)" in result.stdout, result.stderr[-2000:]
    expected = _weights(run / "ep0-ba8-rank0.pt")
    for key, value in _weights(tmp_path / "one").items():
        assert torch.equal(value, expected[key]), key
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "one").eval()
    assert (tmp_path / "one/tokenizer.json").is_file()
    ids = torch.randint(5, 2048, (1, 20))
    with torch.no_grad():
        assert torch.isfinite(hf(input_ids=ids).logits).all()


@pytest.mark.command("average")
def test_the_last_two_checkpoints_average_to_their_mean(run, tmp_path):
    result = bertforge("average", str(run), str(tmp_path / "last2"), "--last", "2")
    assert result.returncode == 0 and "averaged 2 model(s)" in result.stdout, result.stderr[-2000:]
    eight, twelve = _weights(run / "ep0-ba8-rank0.pt"), _weights(run / "ep0-ba12-rank0.pt")
    averaged = _weights(tmp_path / "last2")
    assert not torch.equal(eight["model.embeddings.tok_embeddings.weight"],
                           twelve["model.embeddings.tok_embeddings.weight"])
    for key, value in averaged.items():
        torch.testing.assert_close(value, (eight[key] + twelve[key]) / 2, atol=1e-7, rtol=0)
    # The average of HuggingFace directories equals that of the checkpoints they came from.
    for batch in (8, 12):
        bertforge("export", str(run / f"ep0-ba{batch}-rank0.pt"), str(tmp_path / f"hf{batch}"))
    assert bertforge("average", str(tmp_path / "hf8"), str(tmp_path / "hf12"), str(tmp_path / "fromhf")).returncode == 0
    for key, value in _weights(tmp_path / "fromhf").items():
        torch.testing.assert_close(value, averaged[key], atol=1e-7, rtol=0)


def test_what_cannot_be_averaged_is_refused_and_nothing_is_written(run, tmp_path, sample_data):
    from bertforge.data.tokenizer import train_tokenizer

    cases = [
        (["average", str(tmp_path / "out")], "nothing to average"),
        (["average", str(run), str(tmp_path / "out"), "--last", "4"], "holds 3 checkpoint(s) that verify"),
        (["average", str(run / "a"), str(run / "b"), str(tmp_path / "out"), "--last", "2"], "one run"),
    ]
    subprocess.run([BERTFORGE, "model", "init", "tiny", str(tmp_path / "two-layers"), "num_hidden_layers=2"],
                   check=True, capture_output=True, timeout=300)
    cases.append((["average", str(run / "ep0-ba4-rank0.pt"), str(tmp_path / "two-layers"), str(tmp_path / "out")],
                  "another architecture than"))
    other = train_tokenizer((f"token{i} other{i % 7}" for i in range(4000)), 2048, tmp_path / "other-tokenizer")
    subprocess.run([BERTFORGE, "model", "init", "tiny", str(tmp_path / "other"), "--tokenizer", str(other)],
                   check=True, capture_output=True, timeout=300)
    cases.append((["average", str(run / "ep0-ba4-rank0.pt"), str(tmp_path / "other"), str(tmp_path / "out")],
                  "was trained with another tokenizer"))
    for args, named in cases:
        result = bertforge(*args)
        assert result.returncode == 2 and named in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()
