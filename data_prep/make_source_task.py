"""Write a real text-classification task from a prep recipe's sources: which source (code, web, science) a passage
of text comes from. The sample corpus's three sources make it a fine-tuning example that needs no network.

    python data_prep/make_source_task.py data_prep/sample.yaml data/sample/source-task
    bertforge finetune yamls/finetune/sample-source.yaml runs/quickstart/hf

Passages are the non-overlapping windows of each document; a document goes to train or to validation by a hash of
its text, so the two splits share no document. Writes OUT/train.jsonl and OUT/validation.jsonl ({"text", "label"}
per line).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.data.recipe import load_recipe
from bertforge.data.sources import plan_units, read_unit


def passages(recipe_path: str, per_source: int, chars: int, dev_share: float, seed: int) -> dict[str, list[dict]]:
    recipe = load_recipe(recipe_path)
    rng = random.Random(seed)
    splits: dict[str, list[dict]] = {"train": [], "validation": []}
    for source in recipe.sources:
        chosen = {"train": [], "validation": []}
        for unit in plan_units(source, recipe.files_per_unit):
            for text, _ in read_unit(unit):
                text = " ".join((text or "").split())
                if len(text) < chars // 2:
                    continue
                bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16 ** 8
                split = "validation" if bucket < dev_share else "train"
                for start in range(0, len(text) - chars // 2, chars):  # windows that do not overlap
                    chosen[split].append({"text": text[start:start + chars], "label": source.name})
        for split, rows in chosen.items():
            rng.shuffle(rows)
            splits[split] += rows[:per_source if split == "train" else max(1, int(per_source * dev_share))]
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a prep recipe (data_prep/sample.yaml)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--per-source", type=int, default=2000, help="training passages per source (default 2000)")
    parser.add_argument("--chars", type=int, default=400, help="characters per passage (default 400)")
    parser.add_argument("--dev-share", type=float, default=0.15, help="share of documents held out (default 0.15)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in passages(args.recipe, args.per_source, args.chars, args.dev_share, args.seed).items():
        write_text_atomic(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / split}.jsonl: {len(rows)} passages")


if __name__ == "__main__":
    main()
