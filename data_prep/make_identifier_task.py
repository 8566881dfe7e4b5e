"""Write a classification task only pretraining can solve, from a prep recipe's Python source: is this a name the
code defines, or one made up from the pieces of its names? `get_terminal_size` (real) against `get_handler_size`
(made up); chance is 50%.

    python data_prep/make_identifier_task.py data_prep/sample.yaml data/sample/identifier-task
    bertforge finetune yamls/finetune/sample-identifier.yaml runs/quickstart/hf

Why it is fair, and why it needs pretraining:
- Every real name is a public top-level function or class defined in a file the recipe pretrains on (its holdout
  keeps none of them out), so a pretrained model has read each one where it is defined and where it is used.
- Each made-up name is built from the same pieces as the real ones, in the same places: a name of k pieces
  (split at underscores or case changes) takes its i-th piece from the i-th pieces of other names of the same
  module and style. So the two classes have the same pieces, with the same frequencies at the same positions, and
  no made-up name occurs anywhere in the corpus as a word. A bag of pieces, or of words, tells them apart no
  better than chance (bench/bag_of_tokens.py measures it).
- Real names split into train and validation by a hash, each with its made-up partner, so no validation name occurs
  in a training row: what decides a validation example is whether the model has met that exact name before.
Writes OUT/train.jsonl and OUT/validation.jsonl ({"text", "label"} per line, labels real/made-up).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import random
import re
from collections import defaultdict
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.data.prep import held_out
from bertforge.data.recipe import load_recipe
from bertforge.data.sources import plan_units, read_unit

_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z]+")


def _hash(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16) / 16 ** 12


def pieces(name: str) -> tuple[str, tuple[str, ...]]:
    """(style, pieces): snake_case names split at underscores, CamelCase ones at case changes."""
    if "_" in name:
        return "snake", tuple(name.split("_"))
    return "camel", tuple(_CAMEL.findall(name))


def join(style: str, parts: tuple[str, ...]) -> str:
    return "_".join(parts) if style == "snake" else "".join(parts)


def defined_names(text: str) -> list[str]:
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and not node.name.startswith("_")]


def examples(recipe_path: str, source: str, validation_share: float, seed: int) -> dict[str, list[dict]]:
    recipe = load_recipe(recipe_path)
    (code,) = [s for s in recipe.sources if s.name == source] or [None]
    if code is None:
        raise SystemExit(f"{recipe_path}: no source named {source!r}")
    names: dict[str, set[str]] = defaultdict(set)  # module -> real names
    words: set[str] = set()  # every word of every file: a made-up name must be none of them
    for unit in plan_units(code, recipe.files_per_unit):
        if unit.input.format != "files":
            continue
        root = Path(unit.input.path)
        for name in unit.files:
            for text, _ in read_unit(dataclasses.replace(unit, files=(name,))):
                words.update(re.findall(r"\w+", text or ""))
                if text and not held_out(text, code.holdout.fraction):  # only what pretraining reads
                    names[Path(name).relative_to(root).parts[0].removesuffix(".py")].update(defined_names(text))
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    for module in sorted(names):
        by_shape: dict[tuple[str, int], list[tuple[str, ...]]] = defaultdict(list)
        for name in sorted(names[module]):
            style, parts = pieces(name)
            if len(parts) >= 2 and join(style, parts) == name:
                by_shape[(style, len(parts))].append(parts)
        for (style, length), group in by_shape.items():
            if len(group) < 4:  # too few names of this shape to recombine
                continue
            for parts in group:
                real = join(style, parts)
                for _ in range(20):
                    fake = tuple(rng.choice(group)[i] for i in range(length))
                    made_up = join(style, fake)
                    if made_up not in words and fake != parts:
                        break
                else:
                    continue
                words.add(made_up)
                split = "validation" if _hash(real) < validation_share else "train"
                rows[split] += [{"text": real, "label": "real"}, {"text": made_up, "label": "made-up"}]
    for split_rows in rows.values():
        rng.shuffle(split_rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a prep recipe (data_prep/sample.yaml)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--source", default="code", help="the recipe's source of Python files (default code)")
    parser.add_argument("--validation-share", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = examples(args.recipe, args.source, args.validation_share, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        write_text_atomic(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in split_rows))
    print(f"{len(rows['train'])} training and {len(rows['validation'])} validation examples, half real, half made "
          f"up (chance 50%), in {out}")


if __name__ == "__main__":
    main()
