"""Data and checkpoints in an object store: a real S3-compatible server (moto's, over HTTP on 127.0.0.1, started
by the ``s3`` fixture), spoken to by boto3, mosaicml-streaming and Composer as they would speak to S3.

Without moto installed the tests skip with the reason; under CI (CI=true) that is a failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import free_port, read_metrics, run_config, small_sample_recipe, train_ranks

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))
STORE = "s3://bertforge"


def _bertforge(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([BERTFORGE, *args], capture_output=True, text=True, timeout=timeout)


def _objects(prefix: str) -> dict[str, str]:
    """sha256 of every object under s3://bertforge/<prefix>/, by name below it."""
    from bertforge.store import RemoteFolder

    folder = RemoteFolder(f"{STORE}/{prefix}")
    return {name: hashlib.sha256(folder._store.client.get_object(Bucket="bertforge", Key=f"{prefix}/{name}")
                                 ["Body"].read()).hexdigest() for name in folder.sizes()}


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "prep.lock"}


@pytest.fixture(scope="module")
def remote_data(s3, sample_data, tmp_path_factory) -> dict:
    """The test slice prepared into small shards (many of them, so a run touches more than a small cache holds),
    once into a local folder and once straight into the store."""
    from bertforge.data.prep import prepare
    from bertforge.data.recipe import load_recipe

    root = tmp_path_factory.mktemp("remote-data")
    recipe_path = small_sample_recipe(root, Path(sample_data["tokenizer"]), files=20)
    recipe = yaml.safe_load(recipe_path.read_text())
    recipe.update(shard_size_limit=1 << 14, workers=2)
    recipe_path.write_text(yaml.safe_dump(recipe))
    local = prepare(load_recipe(recipe_path), progress=False)
    staging = root / "staging"
    prepare(load_recipe(recipe_path, [f"out_dir={STORE}/mds", f"staging_dir={staging}"]), progress=False)
    return {"root": root, "recipe": recipe_path, "local": root / "mds", "stats": local, "staging": staging}


def test_prep_writes_the_local_bytes_into_the_store_and_resumes_from_it(remote_data):
    local, staging = remote_data["local"], remote_data["staging"]
    assert _objects("mds") == _files(local)
    assert not list(staging.rglob("*.zstd")), "uploaded shards stay in the staging folder"

    # The store is the record: a unit whose unit.json never arrived (an upload cut off) is made again, alone, and
    # a unit's record in the staging folder that differs from the store's is replaced by it.
    from bertforge.store import RemoteFolder

    store = RemoteFolder(f"{STORE}/mds")
    store.delete(["code/parts/i00-u00000/unit.json", "code/parts/i00-u00000/shard.00000.mds.zstd"])
    store.delete(["code/index.json"])
    stale = staging / "web" / "parts" / "i00-u00000" / "unit.json"  # as a staging folder left by another prep
    stale.write_text(stale.read_text().replace('"fingerprint": "', '"fingerprint": "0'))
    result = _bertforge("prep", str(remote_data["recipe"]), f"out_dir={STORE}/mds", f"staging_dir={staging}")
    assert result.returncode == 0, result.stderr
    assert "1/1" in result.stderr, result.stderr  # one unit made, the others found in the store
    assert _objects("mds") == _files(local)


def test_prep_over_slurm_into_the_store_writes_its_scripts_where_the_nodes_can(remote_data, tmp_path, monkeypatch):
    """Rendered only (the cluster test is in test_slurm.py): for an out_dir in the store the scripts and logs go
    under the current directory, and with every unit in the store only the finishing step is left."""
    from bertforge.slurm import PrepJob, prepare_prep_job

    monkeypatch.chdir(tmp_path)
    array, finish, what = prepare_prep_job(remote_data["recipe"], [f"out_dir={STORE}/mds"], PrepJob(nodes=2),
                                           submit=False)
    assert array is None and "only the finishing step is left" in what
    assert finish == tmp_path / "slurm-prep" / "recipe" / "prep-finish.sbatch"
    assert f"out_dir={STORE}/mds --no-progress --finish" in finish.read_text()


def test_remote_paths_are_checked_before_any_work_and_evaluated_like_local_ones(remote_data, tmp_path, sample_data,
                                                                                monkeypatch):
    from bertforge.data.config import StreamConfig
    from bertforge.data.prep import prepare
    from bertforge.data.recipe import load_recipe
    from bertforge.errors import ConfigError
    from bertforge.train.config import load_train_config
    from bertforge.train.preflight import preflight

    with pytest.raises(ConfigError, match="out_dir 's3://no-such-bucket/mds': bucket 'no-such-bucket' does not "
                                          "exist at http://127.0.0.1:"):
        prepare(load_recipe(remote_data["recipe"], ["out_dir=s3://no-such-bucket/mds"]), progress=False)
    config = load_train_config(run_config(tmp_path, sample_data, "stored", save_folder="s3://no-such-bucket/run"))
    with pytest.raises(ConfigError, match="save_folder 's3://no-such-bucket/run': bucket 'no-such-bucket'"):
        preflight(config, 1, device="cpu")
    config.save_folder = str(tmp_path / "run")
    config.data.streams = {"code": StreamConfig(local=str(tmp_path / "cache"), remote=f"{STORE}/mds/code")}
    preflight(config, 1, device="cpu")  # the stream in the store is fit to train on
    # `bertforge eval mlm --data s3://...`: the tokenizer the store's stats.json records, the same batches as from
    # the local copy.
    from bertforge.eval.config import EvalConfig
    from bertforge.eval.evaluate import dataset_tokenizer
    from bertforge.eval.mlm import load_eval_set

    tokenizer = dataset_tokenizer(f"{STORE}/mds/code", tmp_path / "no-model")
    assert tokenizer == sample_data["tokenizer"]
    sets = [load_eval_set("code", path, tokenizer, EvalConfig(max_tokens=4000), 256, cache_dir=str(tmp_path / name))
            for name, path in (("a", f"{STORE}/mds/code"), ("b", str(remote_data["local"] / "code")))]
    assert sets[0].tokens == sets[1].tokens > 0
    assert [b.input_ids.tolist() for b in sets[0].batches] == [b.input_ids.tolist() for b in sets[1].batches]

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    with pytest.raises(ConfigError, match="data.streams.code.remote 's3://bertforge/mds/code': no AWS credentials"):
        preflight(config, 1, device="cpu")


def _remote_config(tmp_path: Path, sample_data: dict, data: dict, name: str, **overrides) -> Path:
    """A two-rank DDP run (the default parallelism) over the small-shard slice."""
    config = run_config(tmp_path, sample_data, name, max_duration="12288tok", parallelism="ddp", **overrides)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["streams"] = {s: {"local": str(data["local"] / s)} for s in ("code", "web", "science")}
    config.write_text(yaml.safe_dump(cfg))
    return config


def _kill_when_stored(config: Path, store, checkpoint: str) -> None:
    """A two-rank DDP `bertforge train CONFIG`, SIGKILLed (launcher and ranks) once ``checkpoint`` is complete in
    the store."""
    log = config.with_suffix(".log")
    launch = [str(Path(sys.executable).with_name("composer")), "-n", "2", "--master_port", str(free_port()), "-m",
              "bertforge.train", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(launch, start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not store.exists(checkpoint + ".manifest.json"):
        time.sleep(0.05)
    assert proc.poll() is None, log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_training_from_the_store_with_a_small_cache_checkpoints_there_and_resumes_exactly(
        s3, remote_data, sample_data, tmp_path):
    """One two-rank DDP run from local shards; the same run streaming from the store through a cache smaller than what
    it reads, saving into the store, SIGKILLed after its second checkpoint reached the store and restarted with its
    staging folder gone (another machine) and a newer checkpoint's upload cut off in the store: equal losses;
    then the next phase and an export take the final checkpoint from the store."""
    from bertforge.store import RemoteFolder

    local_config = _remote_config(tmp_path, sample_data, remote_data, "local")
    result = train_ranks(local_config, 2)
    assert result.returncode == 0, result.stderr[-3000:]

    cache = tmp_path / "cache"
    shard = max(s["zip_data"]["bytes"] + s["raw_data"]["bytes"] for src in ("code", "web", "science")
                for s in json.loads((remote_data["local"] / src / "index.json").read_text())["shards"])
    limit_kb = 5 * shard // 1024
    config = _remote_config(tmp_path, sample_data, remote_data, "remote", save_folder=f"{STORE}/runs/remote",
                            staging_folder=str(tmp_path / "staging"))
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["streams"] = {s: {"local": str(cache / s), "remote": f"{STORE}/mds/{s}"}
                              for s in ("code", "web", "science")}
    cfg["data"]["cache_limit"] = f"{limit_kb}kb"
    config.write_text(yaml.safe_dump(cfg))

    store = RemoteFolder(f"{STORE}/runs/remote")
    log_start = s3.log.stat().st_size
    _kill_when_stored(config, store, "ep0-ba8-rank0.pt")
    assert store.exists("ep0-ba8-rank0.pt.manifest.json") and not store.exists("ep0-ba12-rank0.pt")
    shutil.rmtree(tmp_path / "staging")
    store.write_text("ep0-ba12-rank0.pt", "the first bytes of an upload cut off midway")  # no manifest: not taken
    result = train_ranks(config, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "downloaded ep0-ba8-rank0.pt" in result.stdout + result.stderr

    staged = tmp_path / "staging"
    remote_losses = [row["loss"] for _, row in sorted(read_metrics(staged).items())]
    local_losses = [row["loss"] for _, row in sorted(read_metrics(tmp_path / "local").items())]
    assert len(local_losses) == 12 and remote_losses == local_losses
    assert store.read_text("metrics.jsonl") == (staged / "metrics.jsonl").read_text()
    assert {"config.yaml", "curves.png", "ep0-ba12-rank0.pt.manifest.json"} <= set(store.sizes())

    # The cache: the runs downloaded more shards than it holds (so it evicted), and it stayed within its limit.
    requests = s3.log.read_bytes()[log_start:].decode(errors="replace")
    fetched = set(re.findall(r'"GET /bertforge/mds/(\S+?\.zstd)', requests))
    sizes = {f"{src}/{s['zip_data']['basename']}": s["zip_data"]["bytes"] + s["raw_data"]["bytes"]
             for src in ("code", "web", "science")
             for s in json.loads((remote_data["local"] / src / "index.json").read_text())["shards"]}
    assert sum(sizes[name] for name in fetched) > 2 * limit_kb * 1024, fetched
    cached = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file() and p.suffix in (".mds", ".zstd"))
    assert cached <= limit_kb * 1024

    # The next phase starts from the final checkpoint in the store (pulled into an emptied staging folder), and
    # `bertforge plan` takes the remote paths as they are.
    from bertforge.train.phases import load_chain, starting_point
    from bertforge.train.plan import format_plan, plan_chain

    shutil.rmtree(staged)
    phase = run_config(tmp_path, sample_data, "next", save_folder=f"{STORE}/runs/next", phase={"after": str(config)})
    chain = load_chain(phase)
    start = starting_point(chain[-1][1])
    assert start.load_path == str(staged / "ep0-ba12-rank0.pt") and start.lineage["phases"] == ["remote"]
    assert "remote" in format_plan(plan_chain(chain, ranks=1))

    from transformers import AutoModelForMaskedLM

    from bertforge.export.folder import export_checkpoint

    out = export_checkpoint(f"{STORE}/runs/remote", tmp_path / "hf", tokenizer=sample_data["tokenizer"])

    model = AutoModelForMaskedLM.from_pretrained(out)
    assert model.config.model_type == "modernbert"

    # The report card reads the run where it is: every complete checkpoint fetched (and verified) as it is scored.
    report = subprocess.run([BERTFORGE, "report", f"{STORE}/runs/remote", "--out", str(tmp_path / "report")],
                            capture_output=True, text=True, timeout=600)
    assert report.returncode == 0, report.stderr[-3000:]
    points = json.loads((tmp_path / "report" / "report.json").read_text())["points"]
    assert [p["name"] for p in points] == ["fresh", "step0000004-tokens4096", "step0000008-tokens8192",
                                           "step0000012-tokens12288"]
    assert all("problem" not in p for p in points) and (tmp_path / "report" / "report.png").is_file()
