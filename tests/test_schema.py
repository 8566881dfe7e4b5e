"""schema.load_config reads every kind of config file the same way: includes, overrides, interpolations, and one
ConfigError line naming the file for whatever is wrong in it."""

import pytest
import yaml
from helpers import ROOT

from bertforge.data.recipe import load_recipe
from bertforge.errors import ConfigError
from bertforge.finetune.config import load_task
from bertforge.model.config import ModernBertConfig, load_model_config
from bertforge.schema import load_config
from bertforge.train.config import load_train_config

LOADERS = {
    "model": (load_model_config, ROOT / "yamls/models/tiny.yaml"),
    "recipe": (load_recipe, ROOT / "data_prep/sample.yaml"),
    "run": (load_train_config, ROOT / "yamls/quickstart.yaml"),
    "task": (load_task, ROOT / "yamls/finetune/sample-source.yaml"),
}


def _copy_with(tmp_path, shipped, **extra):
    """A shipped file copied next to the test with keys added, includes pointed back at the originals."""
    data = yaml.safe_load(shipped.read_text())
    for key, target in (data.get("includes") or {}).items():
        data["includes"][key] = str((shipped.parent / target) if (shipped.parent / target).is_file()
                                    else ROOT / "yamls" / target)
    data.update(extra)
    path = tmp_path / shipped.name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_bad_interpolation_is_one_line_naming_the_file(tmp_path, kind):
    loader, shipped = LOADERS[kind]
    path = _copy_with(tmp_path, shipped, seed_text="${no_such_key}")
    with pytest.raises(ConfigError, match=rf"^{path}: .*no_such_key.*; fix the file or the override$"):
        loader(path)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_yaml_syntax_error_names_the_line(tmp_path, kind):
    loader, _ = LOADERS[kind]
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nlist: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3:1: not valid YAML"):
        loader(path)


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_file_holding_a_list_is_one_line_naming_it(tmp_path, kind):
    """Fault audit: a YAML list (a wrong file passed) was OmegaConf's TypeError traceback."""
    loader, _ = LOADERS[kind]
    path = tmp_path / "a-list.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=rf"^{path}: holds a YAML list, and a config file is a mapping"):
        loader(path)


def test_includes_and_overrides_apply_in_order(tmp_path):
    (tmp_path / "base.yaml").write_text("hidden_size: 64\nnum_attention_heads: 2\nintermediate_size: 96\n")
    (tmp_path / "model.yaml").write_text("includes: {.: base.yaml}\nnum_hidden_layers: 2\nintermediate_size: 128\n")
    config = load_config(ModernBertConfig, tmp_path / "model.yaml", ["hidden_size=128", "num_attention_heads=4"])
    assert (config.hidden_size, config.num_attention_heads, config.intermediate_size, config.num_hidden_layers) == \
        (128, 4, 128, 2)  # the override over the file, the file over its include


def test_a_malformed_override_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{ROOT / 'yamls/models/tiny.yaml'}: .*; fix the file or the override$"):
        load_model_config("tiny", ["hidden_size=[1,"])


def test_a_missing_file_is_named():
    with pytest.raises(FileNotFoundError, match="no config file 'nowhere.yaml'"):
        load_config(ModernBertConfig, "nowhere.yaml")
