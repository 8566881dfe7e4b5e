"""`bertforge finetune`: GLUE task loaders on files in the HF `glue` schema, metrics against scikit-learn/scipy,
pair framing, and real fine-tunes of a pretrained export (downstream: of a run, the CLI over seeds, resume after
SIGKILL, the saved classifier in transformers)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import wandb_runs

from bertforge.errors import DataError
from bertforge.finetune.config import load_task
from bertforge.finetune.metrics import score
from bertforge.finetune.suite import load_suite
from bertforge.finetune.tasks import frame, load_examples

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))

# One row of each GLUE config, field for field as the HF `glue` dataset has it (its label ids and -1 for test).
GLUE_ROWS = {
    "cola": {"sentence": "The book was read by me.", "label": 1},
    "sst2": {"sentence": "a gorgeous , witty film", "label": 1},
    "mrpc": {"sentence1": "He said the plan works .", "sentence2": "The plan works , he said .", "label": 1},
    "stsb": {"sentence1": "A man plays a guitar .", "sentence2": "A man is playing guitar .", "label": 4.6},
    "qqp": {"question1": "How do I learn Python ?", "question2": "What is the best way to learn Python ?",
            "label": 1},
    "mnli": {"premise": "The cat sat on the mat .", "hypothesis": "A cat is sitting .", "label": 0},
    "qnli": {"question": "Where is the mat ?", "sentence": "The mat is in the hall .", "label": 0},
    "rte": {"sentence1": "Paris is the capital of France .", "sentence2": "Paris is in France .", "label": 0},
}


@pytest.fixture(scope="module")
def tokenizer(sample_data):
    from bertforge.finetune.tasks import task_tokenizer

    return task_tokenizer("unused", sample_data["tokenizer"])


@pytest.mark.parametrize("name", sorted(GLUE_ROWS))
def test_each_glue_task_reads_its_hf_schema_and_leaves_test_labels_out(tmp_path, tokenizer, name):
    import pyarrow as pa
    import pyarrow.parquet as pq

    task = load_task(f"glue/{name}")
    row = GLUE_ROWS[name]
    rows = [row | {"idx": i} for i in range(3)] + [row | {"idx": 3, "label": -1}]  # a test-split row
    files = {}
    for split in (task.data.train_split, *task.data.eval_splits):
        files[split] = tmp_path / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), files[split])
    task = load_task(f"glue/{name}", ["data.hf_dataset=null", *(f"data.files.{s}={f}" for s, f in files.items())])
    examples = load_examples(task, task.data.eval_splits[-1], tokenizer, cls_id=1, sep_id=2)
    assert examples.labels == [row["label"]] * 3 and examples.left_out == 1
    texts = [tokenizer.encode(row[f], add_special_tokens=False).ids for f in task.data.text_fields]
    expected = [1, *texts[0], 2] + ([*texts[1], 2] if len(texts) == 2 else [])
    assert examples.ids[0] == expected


def test_label_names_in_local_files_map_to_ids_and_a_wrong_one_is_named(tmp_path, tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": "x y", "label": label}) + "\n" for label in ["b", "a", "b"]))
    task_file = tmp_path / "task.yaml"
    task_file.write_text(yaml.safe_dump({"name": "t", "data": {"files": {"train": "train.jsonl",
                                                                          "validation": "train.jsonl"},
                                                                "text_fields": ["text"]},
                                         "head": {"labels": ["a", "b"]}}))
    assert load_examples(load_task(task_file), "train", tokenizer, 1, 2).labels == [1, 0, 1]
    path.write_text(json.dumps({"text": "x", "label": "c"}) + "\n")
    with pytest.raises(DataError, match=r"task.yaml: split 'train' \(.*\), row 0: label 'c' is not one of head.labels"):
        load_examples(load_task(task_file), "train", tokenizer, 1, 2)
    with pytest.raises(DataError, match=r"has no field\(s\) \['sentence'\] \(its fields: text, label\)"):
        load_examples(load_task(task_file, ["data.text_fields=[sentence]"]), "train", tokenizer, 1, 2)


def test_metrics_equal_their_definitions():
    labels = np.array([1, 1, 0, 0, 1, 0, 1, 1])
    predicted = np.array([1, 0, 0, 1, 1, 0, 1, 0])
    tp, tn, fp, fn = 3, 2, 1, 2
    assert score("accuracy", predicted, labels) == pytest.approx(5 / 8)
    assert score("f1", predicted, labels) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert score("matthews", predicted, labels) == pytest.approx(mcc)
    x, y = np.array([0.1, 2.0, 3.5, 1.0, 4.9]), np.array([0.0, 1.5, 4.0, 2.0, 5.0])
    assert score("pearson", x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    ranks = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    assert score("spearman", x, y) == pytest.approx(np.corrcoef(*ranks)[0, 1])
    multi_true, multi_pred = np.array([[1, 0, 1], [0, 1, 0]]), np.array([[1, 0, 0], [0, 1, 1]])
    assert score("f1_micro", multi_pred, multi_true) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_pairs_are_cut_longest_first():
    assert frame([[5] * 10, [6] * 3], 8, 1, 2) == [1, *[5] * 5, 2, *[6] * 3, 2]
    assert frame([[5] * 9, [6] * 10], 8, 1, 2) == [1, *[5] * 4, 2, *[6] * 4, 2]
    assert frame([[5] * 10], 4, 1, 2) == [1, 5, 5, 5, 5, 2]


def test_suite_order_and_bad_task_names():
    order = [t.name for t in load_suite("glue")]
    assert order.index("mnli") < min(order.index(n) for n in ("rte", "mrpc", "stsb"))
    with pytest.raises(Exception, match=r"no task\(s\) named \['wnli'\]"):
        load_suite("glue", only=["wnli"])


def test_downstream_tasks_of_a_run_score_its_export_above_chance(pretrained):
    table = json.loads((pretrained / "pre" / "downstream" / "results.json").read_text())
    (accuracy,) = [r for r in table["rows"] if r["metric"] == "accuracy"]
    (ndcg,) = [r for r in table["rows"] if r["task"] == "sample-code-search" and r["main"]]
    assert accuracy["seeds"] == 2 and table["average"] == pytest.approx((accuracy["mean"] + ndcg["mean"]) / 2)
    assert accuracy["mean"] > 60, table  # three classes: chance is about 33%
    for seed in (17, 18):
        result = json.loads((pretrained / "pre/downstream/sample-source" / f"seed{seed}/result.json").read_text())
        assert result["train_examples"] == 600 and len(result["epochs"]) == 5
        best = max(result["epochs"], key=lambda e: e["scores"]["validation"]["accuracy"])
        assert result["best_epoch"] == best["epoch"] and result["scores"] == best["scores"]
        # One W&B run per seed, every epoch's loss and scores logged.
        ((config, history),) = wandb_runs(pretrained / "pre/downstream/sample-source" / f"seed{seed}").values()
        assert config["name"] == "sample-source" and config["seed"] == seed
        assert [h["validation/accuracy"] for h in history] == \
            [e["scores"]["validation"]["accuracy"] for e in result["epochs"]]


def test_fine_tuned_model_loads_in_transformers_with_equal_logits(pretrained):
    from transformers import AutoModelForSequenceClassification

    from bertforge.model import ModernBertForSequenceClassification

    saved = pretrained / "pre/downstream/sample-source/seed17/model"
    hf = AutoModelForSequenceClassification.from_pretrained(saved, attn_implementation="sdpa").eval()
    ours = ModernBertForSequenceClassification.from_pretrained(saved).eval()
    assert hf.config.id2label == {0: "code", 1: "web", 2: "science"}
    ids = torch.randint(5, 2048, (3, 50))
    mask = torch.arange(50)[None] < torch.tensor([[50], [31], [9]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits,
                                   hf(input_ids=ids, attention_mask=mask.long()).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.command("finetune")
def test_finetune_resumes_after_sigkill_skipping_finished_seeds(tmp_path, pretrained, source_task, code_search):
    """A suite of both kinds of task (a folder of their YAMLs), killed while the retriever's second seed trains:
    the rerun skips the first (its result untouched) and completes every seed of both tasks."""
    suite = tmp_path / "suite"
    suite.mkdir()
    for task in (source_task, code_search):
        (suite / f"{task.parent.name}.yaml").write_text(task.read_text())
    out = tmp_path / "ft"
    command = [BERTFORGE, "finetune", str(suite), str(pretrained / "export"), "--out", str(out), "--seeds", "2",
               "train.epochs=1"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "sample-code-search/seed17/result.json"
    deadline = time.time() + 600
    while time.time() < deadline and not first.exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and not (out / "sample-code-search/seed18/result.json").exists()
    before = first.read_bytes()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sample-code-search seed 17: done already" in result.stdout
    assert "sample-code-search seed 18: fine-tuning" in result.stdout
    assert first.read_bytes() == before
    # Each seed its own batches (sentence-transformers' sampler alone would give every seed the same).
    losses = [json.loads((out / f"sample-code-search/seed{seed}/result.json").read_text())["epochs"][0]["train_loss"]
              for seed in (17, 18)]
    assert losses[0] != losses[1]
    assert all((out / task / f"seed{seed}/result.json").exists() for task in ("sample-code-search", "sample-source")
               for seed in (17, 18))
    table = (out / "results.md").read_text()
    assert "| sample-source | validation | accuracy * |" in table
    assert "| sample-code-search | test | ndcg@10 * |" in table
    # The fine-tuned export works as users call it: its tokenizer's output straight into the Auto class.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    exported = out / "sample-source/seed18/model"
    tokenizer = AutoTokenizer.from_pretrained(exported)
    classifier = AutoModelForSequenceClassification.from_pretrained(exported).eval()
    with torch.no_grad():
        logits = classifier(**tokenizer(["def f(x): return x", "A theorem about primes."], padding=True,
                                        return_tensors="pt")).logits
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    # Other settings into the same folder are refused, not mixed into the table.
    changed = subprocess.run([*command[:-1], "train.epochs=2"], capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2 and "is the result of other settings or another model" in changed.stderr
