"""Write a classification task that needs syntax, from a prep recipe's Python source: is this function still valid
Python after a one-token edit? Every example is edited (a token deleted, repeated, swapped with the next one, or
replaced by another token of the same function), and Python's own compiler gives the label, so neither class can be
told from the other by the presence of an edit or by its words alone.

    python data_prep/make_syntax_task.py data_prep/sample.yaml data/sample/syntax-task
    bertforge finetune yamls/finetune/sample-syntax.yaml runs/quickstart/hf

Validation functions come only from the files the recipe's holdout keeps out of pretraining (the same hash
`bertforge prep` uses), so a pretrained model has never read them; training functions come from the other files.
Functions lose their docstrings and decorators and are printed by `ast.unparse`, so their layout is uniform. The
classes are balanced (chance is 50%). Writes OUT/train.jsonl and OUT/validation.jsonl ({"text", "label"} per line).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import random
import tokenize
import warnings
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.data.prep import held_out
from bertforge.data.recipe import load_recipe
from bertforge.data.sources import plan_units, read_unit

EDITS = ("delete", "repeat", "swap", "replace")
_LAYOUT = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER, tokenize.COMMENT}


def functions(source_text: str, max_chars: int) -> list[str]:
    """Each function of a module, without docstring or decorators, as `ast.unparse` prints it."""
    try:
        tree = ast.parse(source_text)
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        function = ast.parse(ast.unparse(node)).body[0]  # a copy, to edit
        if ast.get_docstring(function) and len(function.body) > 1:
            function.body = function.body[1:]
        function.decorator_list = []
        text = ast.unparse(function)
        if 2 <= text.count("\n") and len(text) <= max_chars:
            found.append(text)
    return found


def valid(text: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences and the like are warnings, not errors
            compile(text, "<snippet>", "exec")
    except (SyntaxError, ValueError):
        return False
    return True


def edit(text: str, rng: random.Random) -> tuple[str, str] | None:
    """One random one-token edit of ``text`` and its name; None when the function has too few tokens."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type not in _LAYOUT]
    if len(tokens) < 4:
        return None
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def span(token: tokenize.TokenInfo) -> tuple[int, int]:
        return starts[token.start[0] - 1] + token.start[1], starts[token.end[0] - 1] + token.end[1]

    kind = rng.choice(EDITS)
    at = rng.randrange(len(tokens) - 1)
    start, end = span(tokens[at])
    if kind == "delete":
        return text[:start] + text[end:], kind
    if kind == "repeat":
        return text[:end] + " " + text[start:end] + text[end:], kind
    if kind == "swap":
        after_start, after_end = span(tokens[at + 1])
        return (text[:start] + text[after_start:after_end] + text[end:after_start] + text[start:end]
                + text[after_end:], kind)
    other = rng.choice([t.string for t in tokens if t.string != tokens[at].string] or [tokens[at].string])
    return text[:start] + other + text[end:], kind


def examples(recipe_path: str, source: str, per_class: dict[str, int], max_chars: int, seed: int
             ) -> dict[str, list[dict]]:
    recipe = load_recipe(recipe_path)
    (code,) = [s for s in recipe.sources if s.name == source] or [None]
    if code is None:
        raise SystemExit(f"{recipe_path}: no source named {source!r} (it has "
                         f"{', '.join(s.name for s in recipe.sources)})")
    if code.holdout.fraction <= 0:
        raise SystemExit(f"{recipe_path}: source {source!r} holds out nothing ('holdout.fraction' is 0), so no "
                         f"function would be unseen by pretraining; set a holdout fraction")
    rng = random.Random(seed)
    by_split: dict[str, list[str]] = {"train": [], "validation": []}
    for unit in plan_units(code, recipe.files_per_unit):
        if unit.input.format != "files":
            continue
        for text, _ in read_unit(unit):
            split = "validation" if held_out(text or "", code.holdout.fraction) else "train"
            by_split[split] += functions(text or "", max_chars)
    out = {}
    for split, found in by_split.items():
        found = sorted(set(found))
        rng.shuffle(found)
        wanted = per_class[split]
        classes: dict[str, list[dict]] = {"valid": [], "invalid": []}
        for function in found * 3:  # up to three edits of each function where the split has few
            changed = edit(function, rng)
            if changed is None:
                continue
            label = "valid" if valid(changed[0]) else "invalid"
            if len(classes[label]) < wanted:
                classes[label].append({"text": changed[0], "label": label, "edit": changed[1]})
            if all(len(rows) >= wanted for rows in classes.values()):
                break
        size = min(len(rows) for rows in classes.values())
        rows = classes["valid"][:size] + classes["invalid"][:size]
        rng.shuffle(rows)
        out[split] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a prep recipe (data_prep/sample.yaml)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--source", default="code", help="the recipe's source of Python files (default code)")
    parser.add_argument("--per-class", type=int, default=1000, help="training examples per class (default 1000)")
    parser.add_argument("--validation-per-class", type=int, default=500,
                        help="validation examples per class (default 500)")
    parser.add_argument("--max-chars", type=int, default=400, help="longest function kept, in characters")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    per_class = {"train": args.per_class, "validation": args.validation_per_class}
    for split, rows in examples(args.recipe, args.source, per_class, args.max_chars, args.seed).items():
        write_text_atomic(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / f'{split}.jsonl'}: {len(rows)} examples, half of them valid")


if __name__ == "__main__":
    main()
