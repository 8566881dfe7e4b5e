"""A BEIR-format folder read and checked row by row, and a retrieval task's training rows.

A BEIR folder is ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, after a header line). The evaluators take it as three
dicts; what they would silently ignore or crash on (a qrels row naming a document the corpus lacks, a query with
no text, a missing file) is one line here naming the file, the row and the fix, before any training.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from bertforge.errors import ConfigError, DataError
from bertforge.finetune.config import RetrievalTaskConfig
from bertforge.finetune.files import read_table

BEIR_FILES = ("corpus.jsonl", "queries.jsonl")


@dataclass
class BeirSplit:
    """One qrels split of a BEIR folder, as sentence-transformers' InformationRetrievalEvaluator takes it."""

    queries: dict[str, str]
    """Query id to text: the queries the split rates (others are left out)."""
    corpus: dict[str, str]
    """Document id to text (title and text joined): the whole corpus, every document a candidate."""
    relevant: dict[str, set[str]]
    """Query id to the ids of the documents it rates above 0."""


def check_retrieval_task(task: RetrievalTaskConfig, rows: bool = False) -> None:
    """What can fail a retrieval task before it trains: the libraries it needs are installed and every file its
    BEIR folder must hold exists (cheap: a run config's ``downstream:`` task is checked so before the pretraining it
    follows); with ``rows``, every row of the qrels splits it uses too (a suite, before its first task trains)."""
    needed = ["sentence_transformers", *(["pylate"] if task.model == "colbert" else [])]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{task.source}: a {task.model} retrieval task needs {' and '.join(missing)} (not "
                          f"installed); install the retrieval extra: pip install -e '.[retrieval]'")
    folder = task.path(task.data.beir)
    splits = task.data.eval_splits + ([] if task.data.train_file or task.data.hf_dataset else [task.data.train_split])
    for name in (*BEIR_FILES, *(f"qrels/{split}.tsv" for split in splits)):
        if not (folder / name).is_file():
            raise DataError(f"{task.source}: data.beir is {folder}, which has no {name}; a BEIR folder holds "
                            f"corpus.jsonl, queries.jsonl and qrels/<split>.tsv (make one with "
                            f"data_prep/make_retrieval_task.py, or download a BEIR set)")
    for split in splits if rows else []:
        read_beir(folder, split, task.source)


def read_beir(folder: Path, split: str, source: str) -> BeirSplit:
    """The ``split`` of ``folder``; every query and document it names must exist and have text."""
    corpus = {doc_id: " ".join(filter(None, (row.get("title"), row.get("text"))))
              for doc_id, row in _jsonl(folder / "corpus.jsonl", source, allow_empty=False)}
    queries = dict((query_id, row.get("text")) for query_id, row in _jsonl(folder / "queries.jsonl", source,
                                                                           allow_empty=True))
    relevant: dict[str, set[str]] = {}
    qrels = folder / "qrels" / f"{split}.tsv"
    with qrels.open(newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["query-id", "corpus-id"]:
            raise DataError(f"{source}: {qrels} must start with the header line query-id, corpus-id, score "
                            f"(tab-separated), found {header!r}")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            where = f"{source}: {qrels} line {line}"
            if len(row) != 3:
                raise DataError(f"{where}: expected query-id, corpus-id, score separated by tabs, found {row!r}")
            query_id, doc_id, score = row
            if query_id not in queries:
                raise DataError(f"{where}: query-id {query_id!r} is not in queries.jsonl; add the query or drop "
                                f"the row")
            if doc_id not in corpus:
                raise DataError(f"{where}: corpus-id {doc_id!r} is not in corpus.jsonl; add the document or drop "
                                f"the row")
            try:
                rated = float(score) > 0
            except ValueError:
                raise DataError(f"{where}: score {score!r} is not a number") from None
            if rated:
                relevant.setdefault(query_id, set()).add(doc_id)
    if not relevant:
        raise DataError(f"{source}: {qrels} rates no document above 0, so there is nothing to score or train on")
    empty = [q for q in relevant if not (queries[q] or "").strip()]
    if empty:
        line = next(i for i, (q, _) in enumerate(_jsonl(folder / "queries.jsonl", source, True), 1) if q == empty[0])
        raise DataError(f"{source}: {folder / 'queries.jsonl'} line {line}: query {empty[0]!r} has no text; give "
                        f"it its text or drop it and its qrels rows")
    return BeirSplit({q: queries[q] for q in relevant}, corpus, relevant)


def _jsonl(path: Path, source: str, allow_empty: bool):
    """(``_id``, row) per line of a BEIR jsonl file; a line that is not a JSON object with an ``_id``, or whose
    ``_id`` an earlier line has (the last would silently win, and a query's relevant document become another
    text), is named."""
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(f"{source}: {path} line {line} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict) or "_id" not in row:
                raise DataError(f"{source}: {path} line {line} has no '_id'; each line is an object with '_id' "
                                f"and 'text'")
            if not allow_empty and not (row.get("text") or row.get("title") or "").strip():
                raise DataError(f"{source}: {path} line {line}: document {row['_id']!r} has no text or title")
            row_id = str(row["_id"])
            if row_id in seen:
                raise DataError(f"{source}: {path} line {line}: '_id' {row_id!r} is already the id of line "
                                f"{seen[row_id]}; ids must be unique (give one of them another id)")
            seen[row_id] = line
            yield row_id, row


def training_rows(task: RetrievalTaskConfig):
    """The task's training rows as a ``datasets.Dataset`` whose columns the loss takes in order: (query, positive,
    negatives...) texts, or for distillation (query, documents, scores)."""
    import datasets  # noqa: PLC0415 (only when a retrieval task trains)

    data = task.data
    datasets.disable_progress_bars()
    if data.hf_dataset:
        try:
            rows = datasets.load_dataset(data.hf_dataset, data.hf_config, split=data.hf_split)
            if data.hf_queries_config:
                from pylate.utils import KDProcessing  # noqa: PLC0415 (optional: the retrieval extra)

                texts = KDProcessing(datasets.load_dataset(data.hf_dataset, data.hf_queries_config, split="train"),
                                     datasets.load_dataset(data.hf_dataset, data.hf_documents_config, split="train"))
                rows.set_transform(texts.transform)
        except Exception as err:  # noqa: BLE001 (network, unknown config or split: datasets raises many kinds)
            raise DataError(f"{task.source}: could not load the HuggingFace dataset {data.hf_dataset!r} (config "
                            f"{data.hf_config!r}, split {data.hf_split!r}): {str(err).splitlines()[0]}; check the "
                            f"name and your network, or point data.train_file at a local file") from None
        where = f"{task.source}: data.hf_dataset {data.hf_dataset!r}"
    elif data.train_file:
        path = task.path(data.train_file)
        rows = read_table(path, "train", f"{task.source}: data.train_file")
        where = f"{task.source}: data.train_file {path}"
    else:
        split = read_beir(task.path(data.beir), data.train_split, task.source)
        pairs = [(split.queries[q], split.corpus[d]) for q, docs in split.relevant.items() for d in sorted(docs)]
        pairs = pairs[:data.max_train_examples]
        return datasets.Dataset.from_dict({"query": [q for q, _ in pairs], "positive": [d for _, d in pairs]})
    columns = data.columns or ([c for c in rows.column_names if c != data.scores_field])
    wanted = [*columns, *([data.scores_field] if data.scores_field else [])]
    missing = [c for c in wanted if c not in rows.column_names]
    if missing:
        raise DataError(f"{where} has no field(s) {missing} (its fields: {', '.join(rows.column_names)}); set "
                        f"data.columns / data.scores_field to the right names")
    if data.max_train_examples is not None:
        rows = rows.select(range(min(data.max_train_examples, len(rows))))
    if not data.hf_queries_config:
        rows = rows.select_columns(wanted)
        for index, row in enumerate(rows):
            empty = [c for c in columns if not isinstance(row[c], str | list) or not row[c]]
            if empty:
                raise DataError(f"{where}, row {index}: no text in field(s) {empty}; fix or drop the row")
    names = ["query", "documents", "scores"] if data.scores_field else \
        ["query", "positive", *(f"negative_{i}" for i in range(1, len(columns) - 1))]
    if len(columns) < 2:
        raise DataError(f"{where}: training rows need a query and at least one document; data.columns names "
                        f"{columns}")
    return rows if data.hf_queries_config else rows.rename_columns(dict(zip(wanted, names, strict=True)))
