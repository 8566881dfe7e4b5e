"""Session fixtures: a small but real slice of the built-in sample corpus, tokenized and prepared once (per test
worker), the sample corpus's two offline tasks and a short pretraining run fine-tuned on both (used by the
fine-tuning and report tests); and the grouping that keeps the tests sharing one expensive fixture on one
worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_config, small_sample_recipe

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


# The suite runs on pytest-xdist's workers (pyproject: -n auto, --dist loadgroup): a worker builds each session or
# module fixture it needs once. The fixtures below cost a training run, a Slurm cluster or a pretraining with its
# fine-tuning each, so every test using one joins that fixture's group, and one worker runs the whole group; a
# test using none goes to whichever worker is free. The first fixture listed that a test uses names its group.
SHARED_FIXTURES = {
    "pretrained": "finetune-run", "source_task": "finetune-run", "code_search": "finetune-run",
    "short_run": "export-run",
    "cluster": "slurm-cluster", "whole_job": "slurm-cluster",
    "remote_data": "s3-data",
    "finished": "finished-run", "eight_steps": "eight-step-run", "held_data": "held-data",
    "three_checkpoints": "research-checkpoints", "trained": "bf16-run", "other_tokenizer": "other-tokenizer",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        group = next((SHARED_FIXTURES[name] for name in SHARED_FIXTURES if name in item.fixturenames), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session) -> None:
    """A worker whose groups did not reach its test ids would let two workers build one fixture (two Slurm
    clusters whose jobs take the same rendezvous port, say); refuse to run instead."""
    if session.config.getoption("loadgroup", default=False):  # set in xdist workers under --dist loadgroup
        split = [item.nodeid for item in session.items
                 if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if split:
            raise pytest.UsageError(f"pytest-xdist's groups are not in the test ids (e.g. {split[0]}): this pytest "
                                    f"and pytest-xdist do not work together; install the versions .[test] names")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> dict:
    """Tokenizer (vocab 2048) trained on, and shards prepared from, a slice of the sample corpus at 1024."""
    from bertforge.data.prep import prepare
    from bertforge.data.recipe import load_recipe
    from bertforge.data.sources import recipe_texts
    from bertforge.data.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("sample")
    tokenizer = out / "tokenizer"
    recipe_path = small_sample_recipe(out, tokenizer)
    recipe = load_recipe(recipe_path)
    train_tokenizer(recipe_texts(recipe), 2048, tokenizer)
    stats = prepare(recipe, progress=False)
    return {"root": out, "recipe": recipe_path, "tokenizer": str(tokenizer), "mds": out / "mds", "stats": stats}


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 with a bucket 'bertforge'; this process (and its children) point at it."""
    from s3_server import S3Server, require_moto

    require_moto()
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    server.start()
    saved = {key: os.environ.get(key) for key in server.env}
    os.environ.update(server.env)
    try:
        server.make_bucket("bertforge")
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


@pytest.fixture(scope="session")
def source_task(tmp_path_factory, sample_data) -> Path:
    """The sample corpus's "which source" task, from the test slice of the corpus (disjoint documents)."""
    out = tmp_path_factory.mktemp("source-task")
    subprocess.run([sys.executable, str(ROOT / "data_prep/make_source_task.py"), str(sample_data["recipe"]),
                    str(out), "--per-source", "200", "--chars", "300", "--dev-share", "0.3"],
                   check=True, capture_output=True, timeout=600)
    train = [json.loads(line)["text"] for line in (out / "train.jsonl").read_text().splitlines()]
    dev = [json.loads(line)["text"] for line in (out / "validation.jsonl").read_text().splitlines()]
    assert not set(train) & set(dev) and len(dev) >= 90
    task = yaml.safe_load((ROOT / "yamls/finetune/sample-source.yaml").read_text())
    task["data"]["files"] = {"train": str(out / "train.jsonl"), "validation": str(out / "validation.jsonl")}
    task["train"]["seeds"] = 2
    task["wandb"] = {"enabled": True, "project": "bertforge-tests"}  # offline (conftest)
    (out / "task.yaml").write_text(yaml.safe_dump(task))
    return out / "task.yaml"


@pytest.fixture(scope="session")
def code_search(tmp_path_factory, sample_data) -> Path:
    """The code-search task (data_prep/make_retrieval_task.py) on the test slice of the corpus: its BEIR folder
    beside the shipped dense task's YAML, pointed at it, one seed of two epochs on 96 pairs, W&B on (offline)."""
    out = tmp_path_factory.mktemp("code-search")
    made = subprocess.run([sys.executable, str(ROOT / "data_prep/make_retrieval_task.py"), str(sample_data["recipe"]),
                           str(out / "beir"), "--max-queries", "200"], check=True, capture_output=True, text=True,
                          timeout=600)
    assert "200 documents" in made.stdout, made.stdout
    task = yaml.safe_load((ROOT / "yamls/finetune/retrieval/sample-code-search.yaml").read_text())
    task["data"].update(beir=str(out / "beir"), max_train_examples=96)
    task["train"].update(seeds=1, epochs=2)
    task["wandb"] = {"enabled": True, "project": "bertforge-tests"}
    (out / "task.yaml").write_text(yaml.safe_dump(task))
    return out / "task.yaml"


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, sample_data, source_task, code_search) -> Path:
    """A short pretraining run whose phase file names both tasks as `downstream:`: it trains, exports, and
    fine-tunes its export on each."""
    tmp = tmp_path_factory.mktemp("pretrained")
    config = run_config(tmp, sample_data, "pre", export_dir=str(tmp / "export"),
                        downstream=[str(source_task), str(code_search)], max_duration="24576tok")
    result = subprocess.run([BERTFORGE, "train", str(config), "checkpoint.interval=100ba"], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| sample-source | validation | accuracy * |" in result.stdout
    assert "| sample-code-search | test | ndcg@10 * |" in result.stdout
    return tmp
