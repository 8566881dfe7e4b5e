"""Interop: the research repository's Composer checkpoints in (init_from, export), and a run's checkpoints out
(export --all, with an index and model cards)."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import hf_reference_model, padded_batch, read_metrics, run_config

from bertforge.errors import CheckpointError
from bertforge.model import ModernBertForMaskedLM
from bertforge.model.hf_io import from_hf_config
from bertforge.train.export import export_checkpoint
from bertforge.train.run import load_initial_weights

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def _research_name(name: str) -> str:
    """Our (and transformers') tensor name -> the research repository's."""
    if name.startswith("model.layers."):
        return "model.bert.encoder.layers." + name.removeprefix("model.layers.")
    if name.startswith("model."):
        return "model.bert." + name.removeprefix("model.")
    return "model." + name


def _research_checkpoint(path: Path, hf, *, with_config: bool = True, edit=None) -> Path:
    """A checkpoint in the released layout, written from a transformers model's weights."""
    weights = {_research_name(k): v.clone() for k, v in hf.state_dict().items()}
    if edit:
        edit(weights)
    state = {"model": weights, "optimizers": {"DecoupledAdamW": {"state": {}, "param_groups": []}},
             "timestamp": {"batch": 16000}}
    if with_config:
        state["integrations"] = {"huggingface": {"model": {"config": {"content": hf.config.to_dict()}}}}
    torch.save({"state": state}, path)
    return path


def _logits_equal(ours: ModernBertForMaskedLM, hf) -> None:
    ids, mask = padded_batch([40, 17, 64], hf.config.vocab_size)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask.long()).logits
        got = ours.eval()(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask], expected[mask], atol=1e-4, rtol=1e-4)


def test_research_checkpoint_exports_with_transformers_logits(tmp_path):
    from transformers import AutoModelForMaskedLM

    hf = hf_reference_model()
    checkpoint = _research_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", hf)
    out = export_checkpoint(checkpoint, tmp_path / "hf")
    _logits_equal(ModernBertForMaskedLM.from_pretrained(out), hf)
    reloaded = AutoModelForMaskedLM.from_pretrained(out, attn_implementation="sdpa").eval()
    ids, mask = padded_batch([30, 12], hf.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, attention_mask=mask.long()).logits[mask],
                                   hf(input_ids=ids, attention_mask=mask.long()).logits[mask], atol=1e-4, rtol=1e-4)


def test_research_checkpoint_as_init_from_gives_transformers_logits(tmp_path, capsys):
    hf = hf_reference_model()
    checkpoint = _research_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", hf)
    config = from_hf_config(hf.config.to_dict())
    model = ModernBertForMaskedLM(config)
    load_initial_weights(model, SimpleNamespace(init_from=str(checkpoint), init_tile=False, model=config))
    _logits_equal(model, hf)
    assert "holds optimizer state (DecoupledAdamW); it is not carried over" in capsys.readouterr().out


def test_research_checkpoint_without_a_stored_config_takes_the_architecture_given(tmp_path):
    hf = hf_reference_model()
    checkpoint = _research_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", hf, with_config=False)
    with pytest.raises(CheckpointError, match="stores no HuggingFace config; name the architecture"):
        export_checkpoint(checkpoint, tmp_path / "no")
    out = export_checkpoint(checkpoint, tmp_path / "hf", model_config=from_hf_config(hf.config.to_dict()))
    _logits_equal(ModernBertForMaskedLM.from_pretrained(out), hf)


@pytest.mark.parametrize(("edit", "named"), [
    (lambda w: w.pop("model.bert.encoder.layers.1.mlp.Wo.weight"), "missing tensors: model.layers.1.mlp.Wo.weight"),
    (lambda w: w.update({"model.bert.encoder.layers.2.attn.extra.weight": torch.zeros(2)}),
     "unexpected tensors: model.layers.2.attn.extra.weight"),
    (lambda w: w.update({"model.pooler.weight": torch.zeros(2)}),
     "tensors with no place in a ModernBERT: model.pooler.weight"),
])
def test_a_research_checkpoint_with_a_missing_or_extra_tensor_names_it(tmp_path, edit, named):
    hf = hf_reference_model()
    checkpoint = _research_checkpoint(tmp_path / "ep0-ba16000-rank0.pt", hf, edit=edit)
    with pytest.raises(CheckpointError, match=named):
        export_checkpoint(checkpoint, tmp_path / "hf")
    config = from_hf_config(hf.config.to_dict())
    with pytest.raises(CheckpointError, match=named):
        load_initial_weights(ModernBertForMaskedLM(config),
                             SimpleNamespace(init_from=str(checkpoint), init_tile=False, model=config))


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, sample_data) -> Path:
    """A run of 12 steps from a HuggingFace directory (init_from), checkpointed every 4 steps."""
    tmp = tmp_path_factory.mktemp("publish")
    start = tmp / "start"
    subprocess.run([BERTFORGE, "model", "init", "tiny", str(start)], check=True, capture_output=True, timeout=300)
    config = run_config(tmp, sample_data, "published", init_from=str(start))
    subprocess.run([BERTFORGE, "train", str(config)], check=True, capture_output=True, timeout=600)
    return tmp / "published"


def test_export_all_writes_every_checkpoint_with_an_index_and_model_cards(tmp_path, three_checkpoints):
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "all"
    result = subprocess.run([BERTFORGE, "export", str(three_checkpoints), str(out), "--all"], capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    index = json.loads((out / "index.json").read_text())
    metrics = read_metrics(three_checkpoints)
    assert [row["step"] for row in index] == [4, 8, 12]
    for row in index:
        assert row["tokens"] == metrics[row["step"]]["tokens"] and row["train_loss"] == metrics[row["step"]]["loss"]
        assert row["name"] == f"step{row['step']:07d}-tokens{row['tokens']}"
        folder = out / row["name"]
        model = AutoModelForMaskedLM.from_pretrained(folder)
        assert model.config.num_hidden_layers == 4 and (folder / "tokenizer.json").is_file()
        card = (folder / "README.md").read_text()
        assert f"Initial weights from `{three_checkpoints.parent / 'start'}`" in card  # the lineage
        assert f"| tokens seen in this run | {row['tokens']} |" in card and "| code |" in card
    table = (out / "index.md").read_text()
    assert all(f"| {row['name']} | {row['step']} | {row['tokens']} | {row['train_loss']:.4f} |" in table
               for row in index)


def test_export_all_every_n_tokens_keeps_the_first_checkpoint_past_each_multiple(tmp_path, three_checkpoints):
    metrics = read_metrics(three_checkpoints)
    every = metrics[8]["tokens"]  # checkpoints at 4, 8, 12 steps: multiples 0, 1, 1 of it
    result = subprocess.run([BERTFORGE, "export", str(three_checkpoints), str(tmp_path / "some"), "--all",
                             "--every", str(every)], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [row["step"] for row in json.loads((tmp_path / "some" / "index.json").read_text())] == [4, 8]
