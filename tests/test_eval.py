"""Evaluation: the held-out split made at prep time."""

import json
from pathlib import Path

import pytest
import yaml

from bertforge.data.prep import held_out, prepare
from bertforge.data.recipe import load_recipe
from bertforge.schema import ConfigError


@pytest.fixture(autouse=True)
def _fresh_shared_memory():
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    yield


def _documents(source: Path) -> list[bytes]:
    """Every sample of a prepared dataset, as raw token bytes."""
    from streaming import StreamingDataset

    ds = StreamingDataset(local=str(source), shuffle=False, batch_size=1)
    docs = [ds[i]["tokens"].tobytes() for i in range(ds.num_samples)]
    del ds
    return docs


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not (p.suffix == ".mds" and p.with_name(p.name + ".zstd").exists())}


def test_holdout_split_is_disjoint_and_deterministic_whatever_the_workers(tmp_path, sample_data):
    from conftest import small_sample_recipe

    trees = []
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        run.mkdir()
        recipe = load_recipe(small_sample_recipe(run, Path(sample_data["tokenizer"]), files=30),
                             [f"workers={workers}", "files_per_unit=7", "holdout.fraction=0.2",
                              f"out_dir={run / 'mds'}"])
        stats = prepare(recipe, progress=False)
        trees.append(_tree(run / "mds"))
    assert trees[0] == trees[1]  # byte for byte, the split included
    held_total = kept_total = 0
    for name, source in stats.items():
        held = json.loads((tmp_path / "w2/mds" / name / "eval/stats.json").read_text())
        assert held["split"] == "eval" and held["provenance"] == source["provenance"]
        assert source["holdout"]["documents"] == held["documents"] > 0
        held_total, kept_total = held_total + held["documents"], kept_total + source["documents"]
        train_docs = set(_documents(tmp_path / "w2/mds" / name))
        eval_docs = set(_documents(tmp_path / "w2/mds" / name / "eval"))
        assert len(eval_docs) > 0 and not train_docs & eval_docs
    assert 0.12 < held_total / (held_total + kept_total) < 0.28


def test_holdout_cap_keeps_whole_units_and_changing_the_share_refuses_old_units(tmp_path, sample_data):
    recipe = {"tokenizer": sample_data["tokenizer"], "out_dir": str(tmp_path / "out"), "max_seq_len": 64,
              "workers": 1, "holdout": {"fraction": 0.3},
              "sources": [{"name": "web", "inputs": [{"format": "pydoc_topics"}],
                           "holdout": {"fraction": 0.25, "max_tokens": 1}}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    stats = prepare(load_recipe(path), progress=False)["web"]
    assert stats["holdout"]["fraction"] == 0.25  # the source's own setting wins
    assert stats["holdout"]["tokens"] > 0  # the first unit is kept whole, past the cap of 1 token
    recipe["sources"][0]["holdout"]["fraction"] = 0.1
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=r"holdout 0.25, the recipe now gives .* and holdout 0.1"):
        prepare(load_recipe(path), progress=False)


def test_held_out_is_decided_by_the_text_alone():
    texts = [f"document {i}" for i in range(2000)]
    chosen = [held_out(t, 0.1) for t in texts]
    assert chosen == [held_out(t, 0.1) for t in texts] and 100 < sum(chosen) < 300
    assert not any(held_out(t, 0.0) for t in texts)
