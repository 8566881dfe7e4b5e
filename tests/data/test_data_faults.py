"""Faults of real data, each reproduced: another tokenizer, flipped bits, truncated or missing shards, broken
input files, a killed prep worker, huge documents, a read-only dataset."""

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import release_shared_memory, run_config

from bertforge.data.config import DataConfig, StreamConfig
from bertforge.data.integrity import SHARD_HASH
from bertforge.data.loader import PackedMLMLoader
from bertforge.data.prep import prepare, tokenizer_pieces
from bertforge.data.provenance import tokenizer_fingerprint
from bertforge.data.recipe import load_recipe
from bertforge.data.tokenizer import load_tokenizer, train_tokenizer
from bertforge.errors import ConfigError, DataError

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


@pytest.fixture(autouse=True)
def _fresh_shared_memory(tmp_path_factory):
    release_shared_memory(tmp_path_factory.getbasetemp())
    yield


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory, sample_data) -> str:
    """A second tokenizer with the same special ids but another vocabulary."""
    out = tmp_path_factory.mktemp("other_tok") / "tokenizer"
    texts = [f"entirely different words number {i} " * 20 for i in range(200)]
    train_tokenizer(texts, 512, out)
    return str(out)


def _recipe(tmp_path: Path, tokenizer: str, **extra) -> Path:
    recipe = {"tokenizer": tokenizer, "out_dir": str(tmp_path / "out"), "max_seq_len": 64, "workers": 1,
              "sources": [{"name": "web", "inputs": [{"format": "pydoc_topics"}]}], **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _copy_source(sample_data, tmp_path: Path, name: str = "code") -> Path:
    """A fresh copy of one prepared source (no shard unpacked yet)."""
    dest = tmp_path / name
    shutil.copytree(sample_data["mds"] / name, dest, ignore=shutil.ignore_patterns("*.mds"))
    return dest


def _zip_shards(source: Path) -> list[Path]:
    index = json.loads((source / "index.json").read_text())
    return [source / shard["zip_data"]["basename"] for shard in index["shards"]]


def _read_all(local: Path, tokenizer: str, **overrides) -> list[np.ndarray]:
    config = DataConfig(tokenizer=tokenizer, streams={"s": StreamConfig(local=str(local))}, max_seq_len=256,
                        micro_batch_size=4, buffer_docs=32, shuffle=False, **overrides)
    loader = PackedMLMLoader(config)
    batches = [b.labels.numpy().copy() for b in loader]
    del loader
    return batches


# -- provenance ---------------------------------------------------------------------------------------------------

def test_prep_records_provenance_and_refuses_another_tokenizer_or_length(tmp_path, sample_data, other_tokenizer):
    path = _recipe(tmp_path, sample_data["tokenizer"])
    stats = prepare(load_recipe(path), progress=False)
    recorded = stats["web"]["provenance"]
    assert recorded["tokenizer_fingerprint"] == tokenizer_fingerprint(sample_data["tokenizer"])
    assert recorded["max_seq_len"] == 64 and recorded["inputs"][0]["format"] == "pydoc_topics"
    assert json.loads((tmp_path / "out/web/stats.json").read_text())["provenance"] == recorded
    part = next((tmp_path / "out/web/parts").iterdir())
    for overrides in ([f"tokenizer={other_tokenizer}"], ["max_seq_len=128"]):
        with pytest.raises(ConfigError, match=rf"{part} was prepared with tokenizer .* delete {tmp_path / 'out' / 'web'} or "
                                              r"run `bertforge prep RECIPE --force`"):
            prepare(load_recipe(path, overrides), progress=False)
    redone = prepare(load_recipe(path, [f"tokenizer={other_tokenizer}"]), progress=False, force=True)
    assert redone["web"]["provenance"]["tokenizer_fingerprint"] == tokenizer_fingerprint(other_tokenizer)
    assert redone["web"]["provenance"]["tokenizer_fingerprint"] != recorded["tokenizer_fingerprint"]


def test_fingerprint_survives_saving_the_tokenizer_again(tmp_path, sample_data, other_tokenizer):
    load_tokenizer(sample_data["tokenizer"]).save_pretrained(tmp_path / "again")
    assert tokenizer_fingerprint(str(tmp_path / "again")) == tokenizer_fingerprint(sample_data["tokenizer"])
    assert tokenizer_fingerprint(other_tokenizer) != tokenizer_fingerprint(sample_data["tokenizer"])


def test_training_with_another_tokenizer_than_the_data_is_refused(tmp_path, sample_data, other_tokenizer):
    config = run_config(tmp_path, sample_data, "mismatch")
    result = subprocess.run([BERTFORGE, "train", str(config), f"data.tokenizer={other_tokenizer}"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "data.streams.code: " in result.stderr and f"data.tokenizer '{other_tokenizer}' differs" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "mismatch" / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match="was prepared with tokenizer"):  # the loader on its own refuses too
        _read_all(sample_data["mds"] / "web", other_tokenizer)


# -- integrity ----------------------------------------------------------------------------------------------------

@pytest.mark.command("verify")
def test_shards_are_hashed_and_a_flipped_bit_is_caught_by_verify_and_by_the_loader(tmp_path, sample_data, caplog):
    source = _copy_source(sample_data, tmp_path)
    index = json.loads((source / "index.json").read_text())
    assert all(SHARD_HASH in shard["zip_data"]["hashes"] for shard in index["shards"])
    clean = subprocess.run([BERTFORGE, "verify", str(source)], capture_output=True, text=True, timeout=120, check=False)
    assert clean.returncode == 0 and "OK" in clean.stdout, clean.stdout + clean.stderr
    shard = _zip_shards(source)[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit, in the middle of the compressed tokens
    shard.write_bytes(bytes(data))
    result = subprocess.run([BERTFORGE, "verify", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert f"{shard}: {SHARD_HASH} hash differs from the index (corrupted)" in result.stdout
    assert "1 problem(s) found" in result.stderr
    with pytest.raises(DataError, match=rf"shard {shard} cannot be read \(ValueError: Checksum failure: {shard}\)"):
        _read_all(source, sample_data["tokenizer"])
    # Case 20: a later shard, damaged, is met by streaming's download thread first; the error is the same one line,
    # without the "exception calling callback" traceback that thread logged before.
    source = _copy_source(sample_data, tmp_path / "later")
    shard = _zip_shards(source)[-1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x10
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"shard {shard} cannot be read \(ValueError: Checksum failure: {shard}\)"):
        _read_all(source, sample_data["tokenizer"])
    assert [r.getMessage() for r in caplog.records if r.name == "concurrent.futures"] == []


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_truncated_or_missing_shard_is_named_before_training(tmp_path, sample_data, damage):
    source = _copy_source(sample_data, tmp_path)
    shard = _zip_shards(source)[-1]
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-100])
        expected = rf"shard {shard} has \d+ bytes, its index says \d+ \(truncated or replaced\)"
    else:
        shard.unlink()
        expected = rf"shard {shard} is missing"
    with pytest.raises(DataError, match=expected):
        _read_all(source, sample_data["tokenizer"])
    config = run_config(tmp_path, sample_data, "damaged")
    result = subprocess.run([BERTFORGE, "train", str(config), f"data.streams.code.local={source}"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 2 and f"data.streams.code: shard {shard}" in result.stderr, result.stderr[-2000:]


# -- prep inputs and workers --------------------------------------------------------------------------------------

def _truncated_gzip(tmp_path: Path) -> Path:
    path = tmp_path / "docs.jsonl.gz"
    lines = b"".join(json.dumps({"text": f"document number {i} " * 30}).encode() + b"\n" for i in range(400))
    whole = gzip.compress(lines)
    path.write_bytes(whole[: len(whole) // 2])
    return path


def test_a_truncated_gzip_input_is_skipped_counted_and_named(tmp_path, sample_data):
    bad = _truncated_gzip(tmp_path)
    (tmp_path / "good.jsonl").write_text(json.dumps({"text": "a good document"}) + "\n")
    path = _recipe(tmp_path, sample_data["tokenizer"], sources=[
        {"name": "web", "inputs": [{"format": "jsonl", "path": str(tmp_path), "include": ["*.jsonl*"]}]}])
    stats = prepare(load_recipe(path), progress=False)["web"]
    assert stats["skipped"]["unreadable file"] == 1
    assert len(stats["bad_files"]) == 1 and stats["bad_files"][0].startswith(f"{bad}: ")
    assert stats["documents"] > 1  # the good file, and what the truncated one held before the fault
    with pytest.raises(DataError, match=rf"source 'web': cannot read {bad}: .*on_bad_file: skip"):
        prepare(load_recipe(path, ["on_bad_file=fail", f"out_dir={tmp_path / 'strict'}"]), progress=False)


def test_a_killed_prep_worker_fails_the_prep_naming_the_unit(tmp_path, sample_data):
    from helpers import small_sample_recipe

    recipe = small_sample_recipe(tmp_path, Path(sample_data["tokenizer"]), files=60)
    out = tmp_path / "killed"
    proc = subprocess.Popen([BERTFORGE, "prep", str(recipe), "files_per_unit=5", "workers=1", f"out_dir={out}",
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and not workers:
        if list(out.glob("*/parts/*.tmp")):
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            workers = [int(c) for c in children
                       if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
                       and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()]
        time.sleep(0.02)
    assert workers, "no prep worker found"
    os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer does
    _, stderr = proc.communicate(timeout=120)  # before the change: hangs forever
    assert proc.returncode == 2, stderr[-2000:]
    assert "a prep worker died (killed by a signal" in stderr and "Traceback" not in stderr
    assert "while preparing unit(s) " in stderr and "(none started)" not in stderr


def test_long_documents_are_tokenized_in_pieces_with_the_same_ids(sample_data):
    tok = load_tokenizer(sample_data["tokenizer"]).backend_tokenizer
    text = "\n\n".join(Path(p).read_text() for p in sorted(Path(__file__).parent.glob("test_*.py")))
    pieces = tokenizer_pieces(text, 2000)
    assert len(pieces) > 10 and "".join(pieces) == text and max(map(len, pieces)) <= 2000
    whole = tok.encode(text, add_special_tokens=False).ids
    assert [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids] == whole
    assert tokenizer_pieces("x" * 5000, 2000) == ["x" * 2000, "x" * 2000, "x" * 1000]  # no space: hard cuts


# -- read-only data -----------------------------------------------------------------------------------------------

def test_a_cache_dir_leaves_the_dataset_untouched_and_reads_the_same(tmp_path, sample_data):
    source = _copy_source(sample_data, tmp_path)
    before = sorted(p.name for p in source.rglob("*"))
    cached = _read_all(source, sample_data["tokenizer"], cache_dir=str(tmp_path / "cache"))
    assert sorted(p.name for p in source.rglob("*")) == before
    assert list((tmp_path / "cache").rglob("*.mds"))
    in_place = _read_all(_copy_source(sample_data, tmp_path / "second"), sample_data["tokenizer"])
    assert len(cached) == len(in_place) > 0
    assert all(np.array_equal(a, b) for a, b in zip(cached, in_place))


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made read-only for everyone, root included: a read-only bind mount of it over itself (read-only
    storage as a cluster mounts it), else the immutable attribute."""
    for on, off in ((["mount", "--bind", "-o", "ro", str(folder), str(folder)], ["umount", str(folder)]),
                    (["chattr", "-R", "+i", str(folder)], ["chattr", "-R", "-i", str(folder)])):
        if subprocess.run(on, capture_output=True, check=False).returncode == 0:
            try:
                yield
            finally:
                subprocess.run(off, check=True)
            return
    pytest.skip("cannot make a folder read-only here (needs root for `mount --bind -o ro` or `chattr +i`)")


def test_a_read_only_dataset_trains_from_a_cache(tmp_path, sample_data):
    """Before the change streaming unpacks shards next to them and fails on read-only storage."""
    source = _copy_source(sample_data, tmp_path / "ro")
    before = sorted(str(p) for p in source.rglob("*"))
    with _read_only(source):
        with pytest.raises(OSError):
            (source / "probe").write_text("x")
        read_only = _read_all(source, sample_data["tokenizer"])
        assert sorted(str(p) for p in source.rglob("*")) == before
    in_place = _read_all(_copy_source(sample_data, tmp_path / "rw"), sample_data["tokenizer"])
    assert len(read_only) == len(in_place) > 0
    assert all(np.array_equal(a, b) for a, b in zip(read_only, in_place))
