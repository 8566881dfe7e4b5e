"""Data preparation throughput per core, and the share of the raw tokenizer's own speed that prep reaches.

    python bench/prep_throughput.py                                 # the sample recipe, 40 files per input
    python bench/prep_throughput.py --max-files 0 --json out.json   # the whole sample corpus

Both sides run on one core (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false, set before anything imports
``tokenizers``) over the same documents: the reference is ``tokenizers``' ``encode_batch`` of the texts, nothing
else; prep is ``bertforge.data.prep.prepare`` with one worker (reading the files, splitting long texts, encoding,
framing, writing and hashing MDS shards, stats and provenance). Reported: real tokens
per second of each, and prep's share of the reference; and the time reading the documents takes by itself
(``recipe_texts``: listing files, reading them, parsing docstrings), which prep pays and the reference does not.
2T tokens at the measured rate give the core-hours.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    from bertforge.data.prep import prepare
    from bertforge.data.recipe import load_recipe
    from bertforge.data.sources import recipe_texts
    from bertforge.data.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="data_prep/sample.yaml")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer")
    parser.add_argument("--max-files", type=int, default=40, help="per file input (0: all)")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(args.recipe, [f"tokenizer={args.tokenizer}", f"out_dir={tmp}/mds", "workers=1",
                                           "holdout.fraction=0"])
        for source in recipe.sources:
            source.inputs = [dataclasses.replace(i, max_files=args.max_files) if i.format in ("files", "docstrings")
                             else i for i in source.inputs]
        start = time.perf_counter()
        texts = list(recipe_texts(recipe))
        read_s = time.perf_counter() - start
        backend = load_tokenizer(args.tokenizer).backend_tokenizer
        start = time.perf_counter()
        raw_tokens = sum(len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False))
        raw_s = time.perf_counter() - start
        start = time.perf_counter()
        stats = prepare(recipe, progress=False)
        prep_s = time.perf_counter() - start
    tokens = sum(s["tokens"] for s in stats.values())
    summary = {"recipe": args.recipe, "documents": len(texts), "megabytes": sum(map(len, texts)) / 1e6,
               "read_s": read_s,
               "raw_tokens": raw_tokens, "raw_s": raw_s, "raw_tokens_per_s": raw_tokens / raw_s,
               "prep_tokens": tokens, "prep_s": prep_s, "prep_tokens_per_s": tokens / prep_s,
               "share_of_raw": tokens / prep_s / (raw_tokens / raw_s)}
    summary["core_hours_for_2T"] = 2e12 / summary["prep_tokens_per_s"] / 3600
    print(f"{len(texts):,} documents, {summary['megabytes']:.0f} MB on one core: tokenizer alone "
          f"{summary['raw_tokens_per_s']:,.0f} tokens/s; prep {summary['prep_tokens_per_s']:,.0f} tokens/s "
          f"({summary['share_of_raw']:.0%} of it; 2T tokens = {summary['core_hours_for_2T']:,.0f} core-hours); "
          f"reading the documents alone (files, docstrings parsed) took {read_s:.1f} s of prep's {prep_s:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
