"""Fixtures of the fine-tuning tests: the sample corpus's two offline tasks (which source a passage comes from;
code search, a BEIR folder) and one short pretraining run that ends by fine-tuning its export on both."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, run_config

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
