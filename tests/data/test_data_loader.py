"""The packed MLM loader on real prepared shards: mixture, packing, masking, resumption, sharding over ranks."""

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import free_port, release_shared_memory

from bertforge.data.config import DataConfig, StreamConfig
from bertforge.data.loader import PackedMLMLoader
from bertforge.data.masking import mask_tokens
from bertforge.data.packing import BestFitPacker
from bertforge.data.prep import prepare
from bertforge.data.recipe import load_recipe
from bertforge.errors import ConfigError


@pytest.fixture(autouse=True)
def _fresh_shared_memory(tmp_path_factory):
    release_shared_memory(tmp_path_factory.getbasetemp())
    yield


def _loader(sample_data, **overrides) -> PackedMLMLoader:
    streams = {name: StreamConfig(local=str(sample_data["mds"] / name)) for name in ("code", "web", "science")}
    fields = dict(tokenizer=sample_data["tokenizer"], streams=streams, max_seq_len=1024, micro_batch_size=4,
                  buffer_docs=256)
    fields.update(overrides)
    return PackedMLMLoader(DataConfig(**fields))


def _docs(batch) -> list[np.ndarray]:
    cu = batch.cu_seqlens.tolist()
    ids = torch.where(batch.labels >= 0, batch.labels, batch.input_ids).numpy()
    return [ids[a:b] for a, b in zip(cu[:-1], cu[1:])]


def test_rows_hold_whole_framed_documents(sample_data):
    loader = _loader(sample_data)
    for i, batch in zip(range(20), loader):
        assert batch.input_ids.shape[0] == batch.num_tokens == int(batch.cu_seqlens[-1])
        assert batch.num_slots == 4 * 1024 and batch.num_tokens <= batch.num_slots
        for doc in _docs(batch):  # unmasked: each packed document is a whole prepared one, [CLS] ... [SEP]
            assert doc[0] == 0 and doc[-1] == 1 and len(doc) <= 1024


def test_packing_efficiency_on_the_sample_slice(sample_data):
    loader = _loader(sample_data, buffer_docs=512)
    real = slots = 0
    for batch in loader:
        real, slots = real + batch.num_tokens, slots + batch.num_slots
    assert real / slots >= 0.99


def test_best_fit_never_overfills_and_keeps_every_token():
    rng = np.random.default_rng(0)
    docs = [np.arange(n) for n in rng.integers(1, 300, 500)]
    packer = BestFitPacker(max_seq_len=512, buffer_docs=10_000)
    for d in docs:
        packer.add(d)
    out = []
    while len(packer):
        rows = packer.pack(1)
        assert rows.real_tokens <= 512
        out.extend(rows.documents)
    assert sorted(map(len, out)) == sorted(map(len, docs))


def test_masking_statistics_and_specials():
    rng = np.random.default_rng(0)
    special = np.array([0, 1, 2, 3, 4])
    pool = np.arange(5, 1000)
    ids = rng.integers(5, 1000, 200_000)
    ids[::50] = 0  # specials sprinkled in must never be chosen
    inputs, labels = mask_tokens(ids, np.random.default_rng(1), 0.3, 3, special, pool)
    chosen = labels != -100
    ordinary = ~np.isin(ids, special)
    assert not chosen[~ordinary].any()
    assert abs(chosen.sum() / ordinary.sum() - 0.3) < 0.005
    as_mask = (inputs == 3) & chosen
    unchanged = (inputs == ids) & chosen
    randomized = chosen & ~as_mask & ~unchanged
    assert abs(as_mask.sum() / chosen.sum() - 0.8) < 0.01
    assert abs(unchanged.sum() / chosen.sum() - 0.1) < 0.01  # random draws equal to the original land here too
    assert abs(randomized.sum() / chosen.sum() - 0.1) < 0.01
    assert not np.isin(inputs[randomized], special).any()
    again, _ = mask_tokens(ids, np.random.default_rng(1), 0.3, 3, special, pool)
    assert np.array_equal(inputs, again)


def test_resumed_loader_yields_exactly_the_uninterrupted_batches(sample_data):
    reference, saved = [], None
    loader = _loader(sample_data, num_workers=1)
    for i, batch in zip(range(30), loader):
        reference.append(batch)
        if i == 11:
            saved = copy.deepcopy(loader.state_dict())
    del loader
    resumed = _loader(sample_data, num_workers=1)
    resumed.load_state_dict(saved)
    for expected, got in zip(reference[12:], resumed):
        assert torch.equal(expected.input_ids, got.input_ids)
        assert torch.equal(expected.labels, got.labels)
        assert torch.equal(expected.cu_seqlens, got.cu_seqlens)


def test_mixture_proportions_are_honoured(tmp_path, sample_data):
    sources = []
    for name, word in (("a", "alpha"), ("b", "bravo"), ("c", "charlie")):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": f"{word} {i}"}) + "\n" for i in range(1500)))
        sources.append({"name": name, "inputs": [{"format": "jsonl", "path": str(path)}]})
    recipe = {"tokenizer": sample_data["tokenizer"], "out_dir": str(tmp_path / "mds"), "max_seq_len": 64,
              "sources": sources}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    prepare(load_recipe(tmp_path / "r.yaml"), progress=False)
    proportions = {"a": 0.5, "b": 0.3, "c": 0.2}
    loader = PackedMLMLoader(DataConfig(
        tokenizer=sample_data["tokenizer"], max_seq_len=64, micro_batch_size=8, buffer_docs=64,
        streams={k: StreamConfig(local=str(tmp_path / "mds" / k), proportion=p) for k, p in proportions.items()}))
    from bertforge.data.tokenizer import load_tokenizer

    tok = load_tokenizer(sample_data["tokenizer"])
    counts = Counter()
    for batch in loader:
        for doc in _docs(batch):
            counts[tok.decode(doc[1:-1].tolist()).split()[0]] += 1
    total = sum(counts.values())
    assert total > 3000
    for (name, share), word in zip(proportions.items(), ("alpha", "bravo", "charlie")):
        assert abs(counts[word] / total - share) < 0.02, counts


def _prepare_unique_docs(tmp_path, tokenizer, count: int) -> Path:
    path = tmp_path / "unique.jsonl"
    path.write_text("".join(json.dumps({"text": f"unique document {i}"}) + "\n" for i in range(count)))
    recipe = {"tokenizer": tokenizer, "out_dir": str(tmp_path / "mds"), "max_seq_len": 64,
              "sources": [{"name": "u", "inputs": [{"format": "jsonl", "path": str(path)}]}]}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    prepare(load_recipe(tmp_path / "r.yaml"), progress=False)
    return tmp_path / "mds" / "u"


def test_two_ranks_get_disjoint_data(tmp_path, sample_data):
    """Two real processes (a gloo world of 2): each rank's documents, together, are the dataset, once."""
    mds = _prepare_unique_docs(tmp_path, sample_data["tokenizer"], 1024)  # divides evenly: no padding samples
    script = tmp_path / "rank.py"
    script.write_text(
        "import json, sys\n"
        "from bertforge.data.config import DataConfig, StreamConfig\n"
        "from bertforge.data.loader import PackedMLMLoader\n"
        "from bertforge.data.tokenizer import load_tokenizer\n"
        "cfg = DataConfig(tokenizer=sys.argv[1], streams={'u': StreamConfig(local=sys.argv[2])},\n"
        "                 max_seq_len=64, micro_batch_size=2, buffer_docs=16)\n"
        "loader, tok, docs = PackedMLMLoader(cfg), load_tokenizer(sys.argv[1]), []\n"
        "for b in loader:\n"
        "    ids = b.labels.where(b.labels >= 0, b.input_ids).tolist()\n"
        "    cu = b.cu_seqlens.tolist()\n"
        "    docs += [ids[x:y] for x, y in zip(cu[:-1], cu[1:])]\n"
        "docs += [d.tolist() for d in loader.packer.state_dict()['docs']]\n"
        "json.dump([tok.decode(d[1:-1]) for d in docs], open(sys.argv[3], 'w'))\n")
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, str(script), sample_data["tokenizer"], str(mds),
                                       str(tmp_path / f"{rank}.json")], env=env))
    assert all(p.wait(timeout=300) == 0 for p in procs)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(set(ranks[0])) == 512 and len(ranks[1]) == len(set(ranks[1])) == 512
    assert not set(ranks[0]) & set(ranks[1])
    assert set(ranks[0]) | set(ranks[1]) == {f"unique document {i}" for i in range(1024)}


def test_config_errors():
    with pytest.raises(ConfigError, match="give 'proportion' for every stream or for none; missing for: b"):
        DataConfig(tokenizer="t", streams={"a": StreamConfig(local="x", proportion=0.5), "b": StreamConfig(local="y")})
    with pytest.raises(ConfigError, match="'streams' is empty"):
        DataConfig(tokenizer="t")
