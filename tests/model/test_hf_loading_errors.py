"""Checkpoints that do not fit fail with the tensor, its shape and the expected shape."""

import json

import pytest
import torch
from helpers import tiny_config
from safetensors.torch import load_file, save_file

from bertforge.model import ModernBertForMaskedLM
from bertforge.model.hf_io import CheckpointError


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    ModernBertForMaskedLM(tiny_config()).save_pretrained(tmp_path)
    return tmp_path


def test_shape_mismatch_names_the_tensor(saved):
    with pytest.raises(CheckpointError) as err:
        ModernBertForMaskedLM.from_pretrained(saved, vocab_size=600)
    message = str(err.value)
    assert "'model.embeddings.tok_embeddings.weight' has shape (515, 64), the model expects (600, 64)" in message


def test_missing_tensor_is_named(saved):
    state = load_file(saved / "model.safetensors")
    del state["model.layers.2.mlp.Wi.weight"]
    save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors: model\.layers\.2\.mlp\.Wi\.weight"):
        ModernBertForMaskedLM.from_pretrained(saved)


def test_a_different_architecture_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config["model_type"] = "bert"
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model_type is 'bert', expected 'modernbert'"):
        ModernBertForMaskedLM.from_pretrained(saved)


def test_unsupported_option_is_refused(saved):
    config = json.loads((saved / "config.json").read_text())
    config["norm_bias"] = True
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'norm_bias' is True"):
        ModernBertForMaskedLM.from_pretrained(saved)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ModernBertForMaskedLM.from_pretrained(tmp_path)


def test_save_leaves_no_temporary_files(saved):
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors"]
