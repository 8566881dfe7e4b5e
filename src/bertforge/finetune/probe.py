"""A frozen-encoder probe: what a task gets from the encoder as it is, with no fine-tuning.

Every text is embedded as the mean of the encoder's final states. A classification task fits scikit-learn's
logistic regression on the training rows' embeddings (a regression task, ridge regression) and is scored on its
first eval split by its main metric; a retrieval task ranks documents by the cosine of their embedding with the
query's and is scored by nDCG@10 (zero-shot: its training rows are not used). A few seconds per task, so a
pretraining run can do it at every evaluation (``eval.probe``) and show downstream quality beside the loss curve,
long before anything is fine-tuned. The rows are a fixed seeded sample (``max_rows`` per split), the same at every
evaluation, so the points of a run are comparable with each other, though not with a fine-tuned score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from bertforge.errors import DataError
from bertforge.finetune.beir import read_beir
from bertforge.finetune.config import RetrievalTaskConfig, TaskConfig
from bertforge.finetune.loop import packed_batches
from bertforge.finetune.tasks import Examples, frame, load_examples
from bertforge.labels import IGNORE_INDEX
from bertforge.model.classification import pool

PROBE_SEED = 17
"""Seed of the sample of rows: fixed, so every evaluation of a run probes the same rows."""


@dataclass
class ProbeTask:
    """One task's rows, tokenized once at the start of a run."""

    name: str
    kind: str
    """classification, regression or retrieval."""
    metric: str
    """The score reported: the task's main metric, or ndcg@10 for retrieval."""
    train: Examples | None
    """The rows the classifier (or regressor) is fitted on; None for retrieval."""
    scored: Examples
    """Classification: the eval split's rows. Retrieval: the queries then the documents, their labels unused."""
    relevance: np.ndarray | None = None
    """Retrieval: (queries, documents) 1 where the qrels rate the document above 0."""


def load_probe_task(task: TaskConfig | RetrievalTaskConfig, tokenizer, cls_id: int, sep_id: int,
                    max_rows: int) -> ProbeTask:
    """``task``'s rows for the probe, at most ``max_rows`` per split (queries and documents for retrieval), tokenized
    with ``tokenizer`` (a ``tokenizers.Tokenizer``). The preflight has refused the tasks it cannot take
    (train/preflight.py, ``check_probe_tasks``)."""
    if task.kind == "retrieval":
        return _retrieval_rows(task, tokenizer, cls_id, sep_id, max_rows)
    train = load_examples(task, task.data.train_split, tokenizer, cls_id, sep_id)
    scored = load_examples(task, task.data.eval_splits[0], tokenizer, cls_id, sep_id)
    for split, rows in ((task.data.train_split, train), (task.data.eval_splits[0], scored)):
        if not rows.ids:
            raise DataError(f"{task.source}: no labelled rows in split '{split}' to probe with")
    kind = "regression" if task.head.problem_type == "regression" else "classification"
    return ProbeTask(task.name, kind, task.main_metric, _sample(train, max_rows), _sample(scored, max_rows))


def _sample(rows: Examples, max_rows: int) -> Examples:
    """At most ``max_rows`` rows, a seeded random choice in their order (a file sorted by label keeps both)."""
    if len(rows.ids) <= max_rows:
        return rows
    keep = np.sort(np.random.default_rng(PROBE_SEED).choice(len(rows.ids), max_rows, replace=False))
    return Examples([rows.ids[i] for i in keep], [rows.labels[i] for i in keep])


def _retrieval_rows(task: RetrievalTaskConfig, tokenizer, cls_id: int, sep_id: int, max_rows: int) -> ProbeTask:
    """Up to ``max_rows`` queries of the first eval split, and up to ``max_rows`` documents: every one those queries
    rate first, then the rest of the corpus in its order (more when the rated ones alone are more)."""
    split = read_beir(task.path(task.data.beir), task.data.eval_splits[0], task.source)
    queries = sorted(split.relevant)
    if len(queries) > max_rows:
        queries = [queries[i] for i in np.sort(np.random.default_rng(PROBE_SEED).choice(len(queries), max_rows,
                                                                                          replace=False))]
    rated = list(dict.fromkeys(doc for query in queries for doc in sorted(split.relevant[query])))
    chosen = set(rated)
    documents = rated + [doc for doc in split.corpus if doc not in chosen][:max(0, max_rows - len(rated))]
    column = {doc: i for i, doc in enumerate(documents)}
    relevance = np.zeros((len(queries), len(documents)))
    for row, query in enumerate(queries):
        relevance[row, [column[doc] for doc in split.relevant[query]]] = 1.0
    texts = [split.queries[q] for q in queries] + [split.corpus[d] for d in documents]
    encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
    ids = [frame([e.ids], task.train.max_length - 2, cls_id, sep_id) for e in encoded]
    return ProbeTask(task.name, "retrieval", "ndcg@10", None, Examples(ids, [0] * len(ids)), relevance)


@torch.no_grad()
def embed(model, rows: Examples, device, autocast, batch_size: int = 64) -> np.ndarray:
    """(rows, hidden) mean-pooled final states of ``model`` (a ModernBertForMaskedLM, sharded or not), in float32.

    The whole model is called, with no token to predict, and the encoder's output is taken by a hook: under FSDP2
    only the root module's forward gathers the parameters it holds (the embedding), so calling the encoder alone
    would fail there."""
    states = []
    hook = model.model.register_forward_hook(lambda module, args, output: states.append(output))
    out = []
    try:
        for batch in packed_batches(rows, list(range(len(rows.ids))), batch_size, device):
            with autocast():
                model(batch["input_ids"], labels=torch.full_like(batch["input_ids"], IGNORE_INDEX),
                      cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"])
            out.append(pool(states.pop().float(), batch["cu_seqlens"], "mean").cpu())
    finally:
        hook.remove()
    return torch.cat(out).numpy()


def probe_score(model, probe: ProbeTask, device, autocast) -> float:
    """The probe's score (in [0, 1]; correlations in [-1, 1]) of ``model`` (a ModernBertForMaskedLM) on ``probe``."""
    from sklearn.linear_model import LogisticRegression, Ridge  # noqa: PLC0415 (sklearn loads in about 1 s)
    from sklearn.metrics import ndcg_score  # noqa: PLC0415
    from sklearn.pipeline import make_pipeline  # noqa: PLC0415
    from sklearn.preprocessing import StandardScaler  # noqa: PLC0415

    from bertforge.finetune.metrics import score  # noqa: PLC0415 (scipy, with sklearn)

    scored = embed(model, probe.scored, device, autocast)
    if probe.kind == "retrieval":
        queries, documents = scored[:len(probe.relevance)], scored[len(probe.relevance):]
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        documents /= np.maximum(np.linalg.norm(documents, axis=1, keepdims=True), 1e-12)
        return float(ndcg_score(probe.relevance, queries @ documents.T, k=10))
    fitted = embed(model, probe.train, device, autocast)
    linear = Ridge(alpha=1.0) if probe.kind == "regression" else LogisticRegression(max_iter=1000)
    head = make_pipeline(StandardScaler(), linear).fit(fitted, np.asarray(probe.train.labels))
    return score(probe.metric, head.predict(scored), np.asarray(probe.scored.labels))


def run_probes(model, probes: list[ProbeTask], device, autocast) -> dict[str, dict]:
    """{task: {"metric", "score", "seconds"}} for every probe of ``model`` (a ModernBertForMaskedLM), which is put
    back in the mode it was in."""
    was_training = model.training
    model.eval()
    results = {}
    try:
        for probe in probes:
            started = time.perf_counter()
            value = probe_score(model, probe, device, autocast)
            results[probe.name] = {"metric": probe.metric, "score": value,
                                   "seconds": time.perf_counter() - started}
    finally:
        model.train(was_training)
    return results
