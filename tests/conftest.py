"""Session fixtures: a small but real slice of the built-in sample corpus, tokenized and prepared once (per test
worker); and the grouping that keeps the tests sharing one expensive fixture on one worker."""

from __future__ import annotations

import os

import pytest
from helpers import small_sample_recipe

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
