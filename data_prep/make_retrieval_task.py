"""Write a BEIR-format retrieval task from a prep recipe's code source: the query is the first sentence of a Python
function's docstring, the document is the function without its docstring. A model must match natural language to
code, which needs more than shared words, so the task tells a pretrained model from a fresh one.

    python data_prep/make_retrieval_task.py data_prep/sample.yaml data/sample/retrieval-task
    bertforge finetune yamls/finetune/retrieval/sample-code-search.yaml runs/quickstart/hf

With --rename (the default) the function's own name, its parameters and its local variables become v0, v1, ...
so that the query's words are not in the document's identifiers (``abspath`` for "Return an absolute path").
A function goes to the test split or the train split by a hash of its document, so the two share no document;
the corpus holds every document of both splits (the train split's are distractors at test time). Writes
OUT/corpus.jsonl, OUT/queries.jsonl, OUT/qrels/train.tsv and OUT/qrels/test.tsv.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import random
import re
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.data.recipe import load_recipe
from bertforge.data.sources import plan_units, read_unit


class _Rename(ast.NodeTransformer):
    """The function's name, parameters and the names it assigns become v0, v1, ... (globals, attributes and
    builtins keep theirs: renaming them would change what the code does)."""

    def __init__(self, function: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        own = [function.name, *(a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg))]
        own += [n.id for n in ast.walk(function) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)]
        self.names = {name: f"v{i}" for i, name in enumerate(dict.fromkeys(own))}

    def visit_Name(self, node: ast.Name) -> ast.Name:
        node.id = self.names.get(node.id, node.id)
        return node

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.arg = self.names.get(node.arg, node.arg)
        return node

    def visit_FunctionDef(self, node):
        node.name = self.names.get(node.name, node.name)
        return self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef


def first_sentence(docstring: str) -> str:
    """The docstring's first sentence (up to the first full stop or blank line), on one line."""
    paragraph = docstring.strip().split("\n\n")[0]
    sentence = re.split(r"(?<=[.!?])\s", " ".join(paragraph.split()), maxsplit=1)[0]
    return sentence.strip()


def pairs(source_text: str, rename: bool, max_chars: int, min_words: int):
    """(query, document) for each function of a module with a docstring whose first sentence has enough words."""
    try:
        tree = ast.parse(source_text)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        docstring = ast.get_docstring(node)
        body = node.body[1:] if docstring else []
        if not docstring or not body:
            continue
        query = first_sentence(docstring)
        if len(query.split()) < min_words:
            continue
        function = ast.parse(ast.unparse(node)).body[0]  # a copy, to edit
        function.body = function.body[1:]
        function.decorator_list = []
        if rename:
            function = _Rename(function).visit(function)
        document = ast.unparse(function)
        if len(document) <= max_chars and document.count("\n") >= 2:
            yield query, document


def build(recipe_path: str, source: str, max_queries: int, test_share: float, rename: bool, max_chars: int,
          min_words: int, seed: int) -> tuple[list[dict], list[dict], dict[str, list[tuple[str, str]]]]:
    recipe = load_recipe(recipe_path)
    (code,) = [s for s in recipe.sources if s.name == source] or [None]
    if code is None:
        raise SystemExit(f"{recipe_path}: no source named {source!r} (it has "
                         f"{', '.join(s.name for s in recipe.sources)})")
    found, seen_queries, seen_docs = [], {}, set()
    for unit in plan_units(code, recipe.files_per_unit):
        if unit.input.format != "files":
            continue
        for text, _ in read_unit(unit):
            for query, document in pairs(text or "", rename, max_chars, min_words):
                if document in seen_docs:
                    continue
                seen_docs.add(document)
                seen_queries[query] = seen_queries.get(query, 0) + 1
                found.append((query, document))
    found = [(q, d) for q, d in found if seen_queries[q] == 1]  # a query two functions share has no one answer
    random.Random(seed).shuffle(found)
    found = found[:max_queries]
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    for query, document in found:
        digest = hashlib.sha256(document.encode()).hexdigest()
        split = "test" if int(digest[:8], 16) / 16 ** 8 < test_share else "train"
        corpus.append({"_id": f"d{digest[:12]}", "title": "", "text": document})
        queries.append({"_id": f"q{digest[:12]}", "text": query})
        qrels[split].append((queries[-1]["_id"], corpus[-1]["_id"]))
    return corpus, queries, qrels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a prep recipe (data_prep/sample.yaml)")
    parser.add_argument("out", help="output folder (a BEIR-format folder)")
    parser.add_argument("--source", default="code", help="the recipe's source of Python files (default code)")
    parser.add_argument("--max-queries", type=int, default=4000, help="query-function pairs in all (default 4000)")
    parser.add_argument("--test-share", type=float, default=0.25, help="share of pairs in the test split")
    parser.add_argument("--no-rename", dest="rename", action="store_false",
                        help="keep the functions' own names, parameters and variables")
    parser.add_argument("--max-chars", type=int, default=1200, help="longest function kept, in characters")
    parser.add_argument("--min-words", type=int, default=4, help="fewest words in a query (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    corpus, queries, qrels = build(args.recipe, args.source, args.max_queries, args.test_share, args.rename,
                                   args.max_chars, args.min_words, args.seed)
    out = Path(args.out)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "corpus.jsonl", "".join(json.dumps(row) + "\n" for row in corpus))
    write_text_atomic(out / "queries.jsonl", "".join(json.dumps(row) + "\n" for row in queries))
    for split, rows in qrels.items():
        write_text_atomic(out / "qrels" / f"{split}.tsv",
                          "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, d in rows))
    print(f"{out}: {len(corpus)} documents, {len(qrels['train'])} train and {len(qrels['test'])} test queries")


if __name__ == "__main__":
    main()
