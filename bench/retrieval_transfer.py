"""What pretraining buys on a retrieval task: each model's zero-shot score and its score after `bertforge
finetune` (the task's own settings, over its seeds), beside BM25 as a lexical floor (if `bm25s` is installed:
`pip install -e '.[bench]'`). Every score comes from sentence-transformers' InformationRetrievalEvaluator; BM25's
ranking goes through the same evaluator's metric code.

    python data_prep/make_retrieval_task.py data_prep/sample.yaml data/sample/retrieval-task
    bertforge model init tiny runs/fresh-tiny --tokenizer data/sample/tokenizer
    python bench/retrieval_transfer.py retrieval/sample-code-search quickstart=runs/quickstart/hf \\
        fresh=runs/fresh-tiny --out runs/retrieval-transfer train.seeds=3

Writes OUT/transfer.json and OUT/transfer.md (the table) and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def zero_shot(task, model_dir: str, split, staging: Path) -> dict[str, float]:
    """The untrained retriever's scores; a checkpoint is exported into ``staging`` first (never into its folder)."""
    from bertforge.finetune.retrieval import build_retriever, evaluator, hf_start, split_scores

    model = build_retriever(task, hf_start(model_dir, None, staging), "cpu")
    return split_scores(evaluator(task, "test", split)(model), task, model)["test"]


def bm25(task, split) -> dict[str, float] | None:
    try:
        import bm25s
    except ImportError:
        return None
    from bertforge.finetune.retrieval import evaluator

    ids = list(split.corpus)
    index = bm25s.BM25()
    index.index(bm25s.tokenize([split.corpus[i] for i in ids], show_progress=False), show_progress=False)
    found, scores = index.retrieve(bm25s.tokenize(list(split.queries.values()), show_progress=False), k=100,
                                   show_progress=False)
    ranked = [[{"corpus_id": ids[d], "score": float(s)} for d, s in zip(row, row_scores, strict=True)]
              for row, row_scores in zip(found, scores, strict=True)]
    metrics = evaluator(task, "test", split).compute_metrics(ranked)
    names = {"ndcg@10": ("ndcg@k", 10), "mrr@10": ("mrr@k", 10), "recall@100": ("recall@k", 100),
             "recall@10": ("recall@k", 10), "map@100": ("map@k", 100), "accuracy@1": ("accuracy@k", 1)}
    return {m: float(metrics[names[m][0]][names[m][1]]) for m in task.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", help="a retrieval task YAML (retrieval/sample-code-search)")
    parser.add_argument("models", nargs="+", help="NAME=DIR: HuggingFace exports to compare")
    parser.add_argument("--out", required=True, help="output folder (fine-tunes go to OUT/<NAME>)")
    args, overrides = parser.parse_known_args()
    from bertforge.finetune.beir import read_beir
    from bertforge.finetune.config import load_task
    from bertforge.finetune.suite import run_suite

    task = load_task(args.task, overrides)
    split = read_beir(task.path(task.data.beir), task.data.eval_splits[0], task.source)
    out = Path(args.out)
    rows = []
    floor = bm25(task, split)
    if floor:
        rows.append({"model": "BM25 (bm25s)", "zero_shot": floor, "fine_tuned": None})
    for name, model_dir in (m.split("=", 1) for m in args.models):
        table = run_suite([task], model_dir, out / name)
        fine = {r["metric"]: (r["mean"] / 100, r["std"] / 100) for r in table["rows"]}
        untrained = zero_shot(task, model_dir, split, out / name / "start")
        rows.append({"model": name, "dir": model_dir, "zero_shot": untrained, "fine_tuned": fine})
    lines = [f"Task {task.name}: {len(split.queries)} test queries, {len(split.corpus)} documents; fine-tuned "
             f"{task.train.epochs} epochs, LR {task.train.lr}, batch {task.train.batch_size}, "
             f"{task.train.seeds} seed(s) (mean ± std). nDCG@10 / MRR@10 / recall@100 in percent.", "",
             "| model | zero-shot nDCG@10 | zero-shot recall@100 | fine-tuned nDCG@10 | fine-tuned MRR@10 | "
             "fine-tuned recall@100 |", "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        zero, fine = row["zero_shot"], row["fine_tuned"]
        tuned = [f"{100 * fine[m][0]:.1f} ± {100 * fine[m][1]:.1f}" for m in ("ndcg@10", "mrr@10", "recall@100")] \
            if fine else ["-"] * 3
        lines.append(f"| {row['model']} | {100 * zero['ndcg@10']:.1f} | {100 * zero['recall@100']:.1f} | "
                     + " | ".join(tuned) + " |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "transfer.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    (out / "transfer.md").write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
