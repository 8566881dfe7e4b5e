"""Mixing streams by temperature: the shares against a hand computation, what the loader actually reads, exact
resume, and bad input."""

import copy
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from helpers import run_config

from bertforge.data.config import DataConfig, StreamConfig
from bertforge.data.loader import PackedMLMLoader
from bertforge.data.mixture import stream_shares
from bertforge.data.prep import prepare
from bertforge.data.recipe import load_recipe
from bertforge.data.tokenizer import load_tokenizer
from bertforge.errors import ConfigError, DataError

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def _stats(tmp_path, name: str, tokens: int, samples: int) -> StreamConfig:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "stats.json").write_text(json.dumps({"tokens": tokens, "samples": samples}))
    return StreamConfig(local=str(folder))


def test_shares_are_tokens_to_the_power_one_over_t(tmp_path):
    streams = {"big": _stats(tmp_path, "big", 900, 90), "mid": _stats(tmp_path, "mid", 400, 10),
               "small": _stats(tmp_path, "small", 100, 50)}
    shares = {s.name: s for s in stream_shares(DataConfig(tokenizer="t", streams=streams, temperature=0.5))}
    # n^(1/0.5) = n^2: 810000, 160000, 10000 of 980000
    assert shares["big"].token_share == pytest.approx(810000 / 980000)
    assert shares["mid"].token_share == pytest.approx(160000 / 980000)
    assert shares["small"].token_share == pytest.approx(10000 / 980000)
    # streaming draws samples: each share over the stream's mean sample length (10, 40, 2 tokens)
    weights = {"big": 810000 / 10, "mid": 160000 / 40, "small": 10000 / 2}
    for name, weight in weights.items():
        assert shares[name].sample_proportion == pytest.approx(weight / sum(weights.values()))
    by_size = {s.name: s.token_share for s in stream_shares(DataConfig(tokenizer="t", streams=streams,
                                                                        temperature=1.0))}
    assert by_size == pytest.approx({"big": 900 / 1400, "mid": 400 / 1400, "small": 100 / 1400})


def test_the_loader_reads_each_stream_in_its_share_of_the_tokens(tmp_path, sample_data):
    sources = []
    for name, docs, words in (("a", 2400, 5), ("b", 900, 10), ("c", 300, 16)):  # each fits a 64-token sample
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": " ".join([f"src{name}"] + [f"w{i % 50}"] * (words - 1))}) + "\n"
                                for i in range(docs)))
        sources.append({"name": name, "inputs": [{"format": "jsonl", "path": str(path)}]})
    recipe = {"tokenizer": sample_data["tokenizer"], "out_dir": str(tmp_path / "mds"), "max_seq_len": 64,
              "sources": sources}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    prepare(load_recipe(tmp_path / "r.yaml"), progress=False)
    config = DataConfig(tokenizer=sample_data["tokenizer"], max_seq_len=64, micro_batch_size=8, buffer_docs=16,
                        temperature=0.5, streams={k: StreamConfig(local=str(tmp_path / "mds" / k)) for k in "abc"})
    expected = {s.name: s.token_share for s in stream_shares(config)}
    assert expected["c"] > 0.05 and expected["a"] < 0.8  # flattened: by size alone "a" would hold far more
    tok = load_tokenizer(sample_data["tokenizer"])
    tokens = Counter()
    for batch in PackedMLMLoader(config):  # one epoch
        ids = torch.where(batch.labels >= 0, batch.labels, batch.input_ids)
        cu = batch.cu_seqlens.tolist()
        for a, b in zip(cu[:-1], cu[1:]):
            tokens[tok.decode(ids[a + 1:b - 1].tolist()).split()[0].removeprefix("src")] += b - a
    total = sum(tokens.values())
    assert set(tokens) == {"a", "b", "c"}  # every document whole: each one's first word names its stream
    for name, share in expected.items():
        assert abs(tokens[name] / total - share) < 0.01, (tokens, expected)


@pytest.mark.parametrize("mixture", [{}, {"temperature": 0.5}], ids=["by size", "by temperature"])
def test_a_resumed_loader_yields_the_uninterrupted_batches(sample_data, mixture):
    def loader():
        streams = {name: StreamConfig(local=str(sample_data["mds"] / name)) for name in ("code", "web", "science")}
        return PackedMLMLoader(DataConfig(tokenizer=sample_data["tokenizer"], streams=streams, max_seq_len=1024,
                                          micro_batch_size=4, buffer_docs=256, **mixture))
    reference, saved = [], None
    first = loader()
    for i, batch in zip(range(16), first):
        reference.append(batch)
        if i == 5:
            saved = copy.deepcopy(first.state_dict())
    resumed = loader()
    resumed.load_state_dict(saved)
    for expected, got in zip(reference[6:], resumed, strict=False):
        assert torch.equal(expected.input_ids, got.input_ids) and torch.equal(expected.labels, got.labels)


@pytest.mark.parametrize("overrides, message", [
    (["data.temperature=0"], "'temperature' must be above 0 (1 mixes by size), got 0"),
    (["data.temperature=-1"], "'temperature' must be above 0 (1 mixes by size), got -1"),
    (["data.temperature=0.5"],  # the test config gives every stream a proportion
     "give 'temperature' or the streams' 'proportion'/'repeat', not both; remove them from: code, science, web"),
])
def test_bad_temperature_is_one_line_and_nothing_is_written(tmp_path, sample_data, overrides, message):
    config = run_config(tmp_path, sample_data, "mix")
    result = subprocess.run([BERTFORGE, "train", str(config), *overrides], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "mix").exists()


def test_a_stream_without_stats_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match=rf"data.streams.a: {tmp_path / 'a' / 'stats.json'} is missing"):
        stream_shares(DataConfig(tokenizer="t", temperature=0.7, streams={"a": StreamConfig(local=str(tmp_path / "a"))}))


def test_temperature_with_proportions_is_refused_in_the_config():
    with pytest.raises(ConfigError, match="not both"):
        DataConfig(tokenizer="t", temperature=0.7, streams={"a": StreamConfig(local="x", proportion=1.0)})
