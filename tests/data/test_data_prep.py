"""`bertforge prep`: real MDS shards from real text, with the guarantees a long preparation needs."""

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, read_docs, tree_bytes

from bertforge.data.prep import prepare, token_dtype
from bertforge.data.recipe import load_recipe
from bertforge.data.tokenizer import load_tokenizer
from bertforge.errors import ConfigError


def _write_recipe(tmp_path, tokenizer, sources, **extra) -> Path:
    recipe = {"tokenizer": tokenizer, "out_dir": str(tmp_path / "out"), "max_seq_len": 64, "workers": 2,
              "sources": sources, **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_text_round_trips_through_shards(tmp_path, sample_data):
    texts = [f"Document number {i}: the quick brown fox {'jumps ' * (i % 7)}over the lazy dog." for i in range(40)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    path = _write_recipe(tmp_path, sample_data["tokenizer"],
                         [{"name": "web", "inputs": [{"format": "jsonl", "path": str(tmp_path / "docs.jsonl")}]}])
    stats = prepare(load_recipe(path), progress=False)["web"]
    tok = load_tokenizer(sample_data["tokenizer"])
    docs = read_docs(tmp_path / "out" / "web")
    assert stats["documents"] == 40 and stats["samples"] == 40
    assert all(d[0] == tok.cls_token_id and d[-1] == tok.sep_token_id for d in docs)
    assert [tok.decode(d[1:-1].tolist()) for d in docs] == texts
    assert docs[0].dtype == np.uint16 and token_dtype(2048) == "uint16" and token_dtype(100_000) == "uint32"


def test_long_documents_are_chunked_not_truncated(tmp_path, sample_data):
    long_text = " ".join(f"word{i}" for i in range(400))
    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": long_text}) + "\n")
    path = _write_recipe(tmp_path, sample_data["tokenizer"],
                         [{"name": "web", "inputs": [{"format": "jsonl", "path": str(tmp_path / "docs.jsonl")}]}])
    stats = prepare(load_recipe(path), progress=False)["web"]
    tok = load_tokenizer(sample_data["tokenizer"])
    chunks = read_docs(tmp_path / "out" / "web")
    assert len(chunks) > 1 and stats["chunked_documents"] == 1
    assert all(len(c) <= 64 and c[0] == tok.cls_token_id and c[-1] == tok.sep_token_id for c in chunks)
    body = np.concatenate([c[1:-1] for c in chunks]).tolist()
    assert body == tok(long_text, add_special_tokens=False)["input_ids"]


def test_a_wrong_text_field_is_refused_before_any_work(tmp_path, sample_data):
    (tmp_path / "docs.jsonl").write_text(json.dumps({"id": 1, "body": "the text"}) + "\n")
    path = _write_recipe(tmp_path, sample_data["tokenizer"], [
        {"name": "web", "inputs": [{"format": "jsonl", "path": str(tmp_path / "docs.jsonl")}]}])
    with pytest.raises(ConfigError, match=rf"source 'web': the first record of {tmp_path / 'docs.jsonl'} has no "
                                          r"field 'text' \(it has: body, id\); set the input's text_field"):
        prepare(load_recipe(path), progress=False)
    assert not (tmp_path / "out").exists()


def test_two_preps_into_one_folder_are_refused(tmp_path, sample_data):
    from bertforge.folder_lock import acquire_lock, release_lock

    path = _write_recipe(tmp_path, sample_data["tokenizer"], [{"name": "web", "inputs": [{"format": "pydoc_topics"}]}])
    lock = tmp_path / "out" / "prep.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from bertforge.folder_lock import acquire_lock; "
                               "acquire_lock(Path(sys.argv[1]), 'bertforge prep'); print('held', flush=True); "
                               "time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"is in use by another bertforge prep \(pid {holder.pid} on"):
            prepare(load_recipe(path), progress=False)
        assert not (tmp_path / "out" / "web").exists()
    finally:
        holder.kill()
        holder.wait()
    acquire_lock(lock, "bertforge prep")  # the holder is dead: its lock is taken over
    release_lock(lock)
    assert not lock.exists()


def test_an_out_dir_inside_an_input_folder_is_not_read_and_a_rerun_is_a_no_op(tmp_path, sample_data):
    """Case 18: prep read its own shards as input on a rerun, refused them as changed inputs, and --force deleted
    them and failed."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        (tree / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n")
    path = _write_recipe(tmp_path, sample_data["tokenizer"], [
        {"name": "code", "kind": "code", "inputs": [{"format": "files", "path": str(tree), "include": ["**/*"]}]}],
        out_dir=str(tree / "mds"))
    first = prepare(load_recipe(path), progress=False)["code"]
    shards = tree_bytes(tree / "mds")
    again = prepare(load_recipe(path), progress=False)["code"]
    assert first["documents"] == again["documents"] == 3 and tree_bytes(tree / "mds") == shards


def test_bad_records_are_counted_not_fatal(tmp_path, sample_data):
    lines = [json.dumps({"text": "fine document"}).encode(), json.dumps({"text": "   "}).encode(), b"{not json",
             json.dumps({"body": "wrong field"}).encode(), b'{"text": "caf\xe9"}']
    with gzip.open(tmp_path / "docs.jsonl.gz", "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "ok.py").write_text("print('hello')\n")
    (tmp_path / "tree" / "latin1.py").write_bytes(b"# caf\xe9\n")
    path = _write_recipe(tmp_path, sample_data["tokenizer"], [
        {"name": "web", "inputs": [{"format": "jsonl", "path": str(tmp_path / "docs.jsonl.gz")}]},
        {"name": "code", "kind": "code",
         "inputs": [{"format": "files", "path": str(tmp_path / "tree"), "include": ["**/*.py"]}]}])
    stats = prepare(load_recipe(path), progress=False)
    assert stats["web"]["documents"] == 1
    assert stats["web"]["skipped"] == {"empty document": 1, "invalid json": 1, "missing text field 'text'": 1,
                                       "undecodable bytes": 1}
    assert stats["code"]["documents"] == 1 and stats["code"]["skipped"] == {"undecodable bytes": 1}
    on_disk = json.loads((tmp_path / "out" / "web" / "stats.json").read_text())
    assert on_disk["skipped"] == stats["web"]["skipped"]


def test_parquet_and_zstd_inputs(tmp_path, sample_data):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    pq.write_table(pa.table({"content": ["alpha beta", "gamma delta"]}), tmp_path / "a.parquet")
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "epsilon"}\n'))
    path = _write_recipe(tmp_path, sample_data["tokenizer"], [
        {"name": "pq", "inputs": [{"format": "parquet", "path": str(tmp_path / "a.parquet"), "text_field": "content"}]},
        {"name": "zs", "inputs": [{"format": "jsonl", "path": str(tmp_path / "b.jsonl.zst")}]}])
    stats = prepare(load_recipe(path), progress=False)
    assert stats["pq"]["documents"] == 2 and stats["zs"]["documents"] == 1


def test_missing_input_fails_before_any_work(tmp_path, sample_data):
    path = _write_recipe(tmp_path, sample_data["tokenizer"],
                         [{"name": "web", "inputs": [{"format": "jsonl", "path": str(tmp_path / "nope.jsonl")}]}])
    with pytest.raises(ConfigError, match=r"sources\[0\]\.inputs\[0\]\.path .*nope\.jsonl.* does not exist"):
        load_recipe(path)
    assert not (tmp_path / "out").exists()


def test_unknown_format_names_the_choices(tmp_path, sample_data):
    path = _write_recipe(tmp_path, sample_data["tokenizer"],
                         [{"name": "web", "inputs": [{"format": "csv", "path": str(tmp_path)}]}])
    with pytest.raises(ConfigError, match=r"'sources\[0\]\.inputs\[0\]\.format' must be one of 'jsonl', 'parquet'"):
        load_recipe(path)


def test_prep_is_deterministic_whatever_the_workers(tmp_path, sample_data):
    from helpers import small_sample_recipe

    outputs = []
    for workers in (1, 2):
        run = tmp_path / f"w{workers}"
        run.mkdir()
        recipe = load_recipe(small_sample_recipe(run, Path(sample_data["tokenizer"]), files=25),
                             [f"workers={workers}", "out_dir=" + str(tmp_path / "mds" / str(workers))])
        prepare(recipe, progress=False)
        outputs.append(tree_bytes(tmp_path / "mds" / str(workers)))
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) > 10
    assert outputs[0] == outputs[1]


@pytest.mark.command("prep")
def test_killed_prep_resumes_to_the_same_bytes(tmp_path, sample_data):
    from helpers import small_sample_recipe

    clean = tmp_path / "clean"
    clean.mkdir()
    recipe_path = small_sample_recipe(clean, Path(sample_data["tokenizer"]), files=60)
    overrides = ["files_per_unit=5", "workers=1"]
    prepare(load_recipe(recipe_path, overrides + [f"out_dir={clean / 'mds'}"]), progress=False)

    killed = tmp_path / "killed" / "mds"
    cmd = [str(Path(sys.executable).with_name("bertforge")), "prep", str(recipe_path), *overrides,
           f"out_dir={killed}", "--no-progress"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(killed.glob("*/parts/i*-u*[0-9]"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "code" / "stats.json").exists(), "prep finished before it could be killed"
    subprocess.run(cmd, check=True, timeout=300)
    assert tree_bytes(killed) == tree_bytes(clean / "mds")


def test_sample_recipe_names_three_kinds_of_text():
    recipe = load_recipe(ROOT / "data_prep/sample.yaml")
    assert {s.kind for s in recipe.sources} == {"code", "web", "science"}
