"""Presets, parameter counts without allocation, and config errors that say what to fix."""

import pytest
import torch

from bertforge.errors import ConfigError
from bertforge.model import ModernBertConfig, count_parameters, load_model_config
from bertforge.model.report import build_on_meta


@pytest.mark.parametrize("preset, published", [("base", 149e6), ("large", 395e6)])
def test_presets_have_the_published_parameter_counts_on_meta(preset, published):
    model = build_on_meta(load_model_config(preset))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert abs(count_parameters(model) - published) / published < 0.01


def test_tiny_preset_builds_and_runs():
    config = load_model_config("tiny")
    assert config.hidden_size < 768 and config.head_dim == 64


def test_overrides_apply():
    config = load_model_config("base", ["global_rope_theta=160000", "attention_backend=sdpa"])
    assert config.global_rope_theta == 160000.0 and config.attention_backend == "sdpa"


def test_unknown_key_names_file_key_and_nearest(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("hiden_size: 768\n")
    with pytest.raises(ConfigError) as err:
        load_model_config(path)
    message = str(err.value)
    assert str(path) in message and "'hiden_size'" in message and "did you mean 'hidden_size'" in message


def test_unknown_override_is_reported_too():
    with pytest.raises(ConfigError, match="did you mean 'num_hidden_layers'"):
        load_model_config("tiny", ["num_hiden_layers=3"])


def test_wrong_type_is_reported(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("hidden_size: big\n")
    with pytest.raises(ConfigError, match=r"'hidden_size' must be an integer, got 'big'"):
        load_model_config(path)


@pytest.mark.parametrize("fields, needle", [
    (dict(hidden_size=100, num_attention_heads=3),
     "'hidden_size' (100) must be divisible by 'num_attention_heads' (3)"),
    (dict(local_attention=127), "'local_attention' is the full sliding window and must be even"),
    (dict(vocab_size=1000), "'pad_token_id' (50283) must be a valid id below vocab_size (1000)"),
    (dict(attention_dropout=1.5), "'attention_dropout' must be in [0, 1)"),
])
def test_impossible_architectures_are_rejected(fields, needle):
    with pytest.raises(ConfigError) as err:
        ModernBertConfig(**fields)
    assert needle in str(err.value)


def test_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("local_attention: 127\n")
    with pytest.raises(ConfigError, match=str(path)):
        load_model_config(path)


def test_unknown_attention_backend_lists_choices():
    with pytest.raises(ConfigError, match="'attention_backend' must be one of 'auto', 'flash', 'flex', 'sdpa'"):
        load_model_config("tiny", ["attention_backend=xformers"])


def test_missing_preset_lists_the_presets():
    with pytest.raises(FileNotFoundError, match="presets: base, large, mmbert-base, tiny"):
        load_model_config("medium")


def test_meta_build_allocates_nothing():
    model = build_on_meta(load_model_config("large"))
    assert sum(p.numel() for p in model.parameters() if p.device.type != "meta") == 0
    assert isinstance(model.decoder.weight, torch.nn.Parameter)
