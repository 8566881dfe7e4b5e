"""Retrieval tasks of `bertforge finetune` (kind: retrieval): a dense retriever fine-tuned as a pretraining run's
`downstream:` task and a ColBERT one from the CLI, each saved model used the way its library's users use it and
scored again by that library's evaluator; distillation from teacher scores; the offline task's folder; and every
bad input the issue lists, refused in one line before training."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, wandb_runs

from bertforge.errors import ConfigError, DataError
from bertforge.finetune.beir import read_beir
from bertforge.finetune.config import load_task

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


def beir_split(task_file: Path, split: str = "test"):
    task = load_task(task_file)
    return read_beir(task.path(task.data.beir), split, task.source)


def test_code_search_folder_is_beir_with_disjoint_splits_and_renamed_functions(code_search):
    task = load_task(code_search)
    test, train = beir_split(code_search, "test"), beir_split(code_search, "train")
    assert len(test.corpus) == 200 and len(test.queries) + len(train.queries) == 200
    assert len(test.queries) >= 30
    test_docs = {d for docs in test.relevant.values() for d in docs}
    train_docs = {d for docs in train.relevant.values() for d in docs}
    assert not test_docs & train_docs
    for query_id, (doc_id,) in list(test.relevant.items())[:50]:
        document = test.corpus[doc_id]
        assert document.startswith(("def v0(", "async def v0(")) and '"""' not in document.split("\n")[1]
        assert task.path(task.data.beir).joinpath("queries.jsonl").is_file() and test.queries[query_id]


def test_dense_downstream_retriever_loads_in_sentence_transformers_and_reproduces_its_score(pretrained,
                                                                                           code_search):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    table = json.loads((pretrained / "pre/downstream/results.json").read_text())
    (row,) = [r for r in table["rows"] if r["task"] == "sample-code-search" and r["metric"] == "ndcg@10"]
    folder = pretrained / "pre/downstream/sample-code-search/seed17"
    result = json.loads((folder / "result.json").read_text())
    assert len(result["epochs"]) == 2 and result["kind"] == "retrieval" and result["model"] == "dense"
    assert row["mean"] == pytest.approx(100 * result["scores"]["test"]["ndcg@10"])
    best = max(result["epochs"], key=lambda e: e["scores"]["test"]["ndcg@10"])
    assert result["best_epoch"] == best["epoch"] and result["scores"] == best["scores"]
    assert result["train_examples"] == 96  # data.max_train_examples of the BEIR folder's train pairs
    test = beir_split(code_search)
    # The saved model is a sentence-transformers model: mean pooling over the encoder, loaded by the library alone.
    model = SentenceTransformer(str(folder / "model"), device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling"] and model[1].pooling_mode_mean_tokens
    start = SentenceTransformer(str(pretrained / "export"), device="cpu")  # the library's own mean pooling
    trained, exported = model[0].auto_model.state_dict(), start[0].auto_model.state_dict()
    assert trained.keys() == exported.keys() and any(not torch.equal(trained[k], exported[k]) for k in trained)
    evaluator = InformationRetrievalEvaluator(test.queries, test.corpus, test.relevant, name="test", ndcg_at_k=[10],
                                              mrr_at_k=[10], precision_recall_at_k=[100])
    scores = evaluator(model)
    assert scores["test_cosine_ndcg@10"] == pytest.approx(result["scores"]["test"]["ndcg@10"], abs=1e-4)
    assert scores["test_cosine_mrr@10"] == pytest.approx(result["scores"]["test"]["mrr@10"], abs=1e-4)
    # One W&B run for the seed, each epoch's scores logged.
    ((config, history),) = wandb_runs(folder).values()
    assert config["name"] == "sample-code-search" and config["seed"] == 17
    assert [h["test/ndcg@10"] for h in history] == [e["scores"]["test"]["ndcg@10"] for e in result["epochs"]]


@pytest.mark.command("finetune")
def test_colbert_retriever_from_the_cli_loads_in_pylate_and_reproduces_its_score(tmp_path, pretrained,
                                                                                 code_search):
    from pylate import models
    from pylate.evaluation import PyLateInformationRetrievalEvaluator

    task = yaml.safe_load(code_search.read_text())
    task.update(name="code-search-colbert", model="colbert", wandb={"enabled": False})
    task["train"].update(epochs=1, embedding_size=64)
    (tmp_path / "colbert.yaml").write_text(yaml.safe_dump(task))
    result = subprocess.run([BERTFORGE, "finetune", str(tmp_path / "colbert.yaml"), str(pretrained / "export"),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| code-search-colbert | test | ndcg@10 * |" in result.stdout
    folder = tmp_path / "out/code-search-colbert/seed17"
    saved = json.loads((folder / "result.json").read_text())
    test = beir_split(code_search)
    model = models.ColBERT(str(folder / "model"), device="cpu")
    query, document = model.encode(["Return the path."], is_query=True)[0], \
        model.encode(["def v0(v1):\n    return v1"], is_query=False)[0]
    assert query.shape == (32, 64) and document.shape[1] == 64  # a vector per token, projected to 64
    evaluator = PyLateInformationRetrievalEvaluator(test.queries, test.corpus, test.relevant, name="test",
                                                    ndcg_at_k=[10], mrr_at_k=[10], precision_recall_at_k=[100])
    scores = evaluator(model)
    assert scores["test_MaxSim_ndcg@10"] == pytest.approx(saved["scores"]["test"]["ndcg@10"], abs=1e-4)


def test_colbert_distills_teacher_scores_from_a_file(tmp_path, pretrained, code_search):
    """Rows of (query, documents, teacher scores) train a ColBERT with PyLate's Distillation loss."""
    from bertforge.finetune.retrieval import train_retriever

    train = beir_split(code_search, "train")
    docs = list(train.corpus.values())
    rows = [{"question": train.queries[q], "teacher": [9.0, 1.0, 0.5],
             "passages": [train.corpus[d], docs[i % len(docs)], docs[(i * 7) % len(docs)]]}
            for i, (q, (d,)) in enumerate(list(train.relevant.items())[:24])]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task_yaml = yaml.safe_load(code_search.read_text())
    task_yaml.update(name="distilled", model="colbert", wandb={"enabled": False})
    task_yaml["data"].update(train_file=str(tmp_path / "train.jsonl"), columns=["question", "passages"],
                             scores_field="teacher")
    task_yaml["train"].update(epochs=1, batch_size=8, embedding_size=32)
    (tmp_path / "distilled.yaml").write_text(yaml.safe_dump(task_yaml))
    logged = []
    result = train_retriever(load_task(tmp_path / "distilled.yaml"), pretrained / "export", 3, tmp_path / "seed3",
                             log=logged.append)
    assert result["train_examples"] == 24 and len(result["epochs"]) == 1
    assert any("step 3/3" in line for line in logged), logged
    assert (tmp_path / "seed3/model/config_sentence_transformers.json").is_file()
    assert not (tmp_path / "seed3/trainer").exists()  # the trainer's checkpoints are gone once the model is saved


def _beir(tmp_path: Path, corpus=None, queries=None, qrels=None) -> Path:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    corpus = corpus or [{"_id": "d1", "title": "", "text": "def v0(): pass"}, {"_id": "d2", "text": "x = 1"}]
    queries = queries or [{"_id": "q1", "text": "Do nothing."}, {"_id": "q2", "text": "Set x."}]
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split in ("train", "test"):
        (folder / "qrels" / f"{split}.tsv").write_text(qrels or "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    task = {"name": "t", "kind": "retrieval", "data": {"beir": str(folder)}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(task))
    return tmp_path / "task.yaml"


def test_bad_beir_folders_are_named_by_file_and_row(tmp_path):
    from bertforge.finetune.suite import check_tasks

    cases = {
        "unknown document": (dict(qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t1\n"),
                             r"qrels/test.tsv line 3: corpus-id 'd9' is not in corpus.jsonl"),
        "unknown query": (dict(qrels="query-id\tcorpus-id\tscore\nq7\td1\t1\n"),
                          r"qrels/test.tsv line 2: query-id 'q7' is not in queries.jsonl"),
        "empty query": (dict(queries=[{"_id": "q1", "text": "Do nothing."}, {"_id": "q2", "text": "  "}]),
                        r"queries.jsonl line 2: query 'q2' has no text"),
        "no header": (dict(qrels="q1\td1\t1\n"), r"qrels/test.tsv must start with the header line"),
    }
    for name, (files, message) in cases.items():
        case = tmp_path / name.replace(" ", "-")
        task = load_task(_beir(case, **files))
        with pytest.raises(DataError, match=message):
            read_beir(task.path(task.data.beir), "test", task.source)
    task = load_task(_beir(tmp_path / "missing"))
    (tmp_path / "missing/beir/corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"task.yaml: data.beir is .*beir, which has no corpus.jsonl"):
        check_tasks([task])


def test_a_retrieval_task_without_its_library_is_refused_before_training(tmp_path, monkeypatch):
    """A user who installed bertforge without the retrieval extra learns it when the task loads (a run's
    `downstream:` is checked before pretraining), not when the run has trained for days."""
    import importlib.util

    from bertforge.finetune.suite import check_tasks

    task = load_task(_beir(tmp_path), ["model=colbert"])
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pylate" else find_spec(name))
    with pytest.raises(ConfigError, match=r"a colbert retrieval task needs pylate \(not installed\); install "
                                          r"the retrieval extra: pip install -e '.\[retrieval\]'"):
        check_tasks([task])


@pytest.mark.command("finetune")
def test_bad_retrieval_input_exits_2_with_one_line_before_training(tmp_path, pretrained):
    task_file = _beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t1\n")
    result = subprocess.run([BERTFORGE, "finetune", str(task_file), str(pretrained / "export"), "--out",
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "line 3: corpus-id 'd9' is not in corpus.jsonl" in result.stderr
    assert not (tmp_path / "out/t").exists()  # nothing trained, no seed folder


def test_a_task_mixing_kinds_or_models_is_refused_in_one_line(tmp_path):
    task_file = _beir(tmp_path)
    task = yaml.safe_load(task_file.read_text())
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text(yaml.safe_dump(task | {"head": {"labels": ["a", "b"]}}))
    with pytest.raises(ConfigError, match=r"mixed.yaml: head belong to classification tasks, and this one says "
                                          r"kind: retrieval"):
        load_task(mixed)
    mixed.write_text(yaml.safe_dump(task | {"data": task["data"] | {"label_field": "label"}}))
    with pytest.raises(ConfigError, match=r"data.label_field belong to classification tasks"):
        load_task(mixed)
    with pytest.raises(ConfigError, match=r"'data.scores_field' \(distillation from teacher scores\) is for model: "
                                          r"colbert"):
        load_task(task_file, ["data.scores_field=scores"])
    with pytest.raises(ConfigError, match=r"unknown retrieval metric\(s\) \['ndcg@5'\]"):
        load_task(task_file, ["metrics=[ndcg@5]", "main_metric=ndcg@5"])
    with pytest.raises(ConfigError, match=r"'model' must be one of"):
        load_task(task_file, ["model=sparse"])


def test_shipped_retrieval_recipes_load():
    for name in ("sample-code-search", "sample-code-search-colbert", "msmarco-dense", "msmarco-colbert"):
        task = load_task(f"retrieval/{name}")
        assert task.kind == "retrieval" and task.main_metric == "ndcg@10"
    assert load_task("retrieval/msmarco-dense").train.mini_batch_size == 16
    colbert = load_task("retrieval/msmarco-colbert")
    assert colbert.model == "colbert" and colbert.data.scores_field == "scores"
    assert (ROOT / "data_prep/make_retrieval_task.py").is_file()
