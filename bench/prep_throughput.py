"""Data preparation throughput per core, and the share of the raw tokenizer's own speed that prep reaches.

    python bench/prep_throughput.py                                 # the sample recipe, 400 files per input
    python bench/prep_throughput.py --max-files 0 --json out.json   # the whole sample corpus

Everything runs on one core (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false, set before anything imports
``tokenizers``) over the same documents: the sample recipe's texts, written as one JSONL file, the format corpora
at scale come in. Measured, each as real tokens per second:

- reference: ``tokenizers``' ``encode_batch`` of the texts, nothing else;
- per worker: what one prep worker does with a unit (``prepare_unit``: reading the JSONL, splitting long texts,
  encoding, framing, writing and hashing MDS shards, its stats), after a first unit has loaded the tokenizer, as
  a worker does once for thousands of units;
- end to end: ``bertforge.data.prep.prepare`` with one worker, which adds planning, the worker process's start
  and the sources' indexes (fixed costs, small against a real corpus, large against this one).

And the time reading the sample recipe's own inputs takes (listing and reading files, parsing Python files for
docstrings), which a prep of that recipe adds to the tokenizer's work. 2T tokens at the per-worker rate give the
core-hours.
"""

from __future__ import annotations

import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    from bertforge.data.prep import UnitJob, prepare, prepare_unit
    from bertforge.data.recipe import load_recipe
    from bertforge.data.sources import plan_units, recipe_texts
    from bertforge.data.tokenizer import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="data_prep/sample.yaml")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer")
    parser.add_argument("--max-files", type=int, default=400, help="per file input (0: all)")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, [f"tokenizer={args.tokenizer}"])
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

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus" / "texts.jsonl"
        corpus.parent.mkdir()
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        jsonl = load_recipe(args.recipe, [f"tokenizer={args.tokenizer}", f"out_dir={tmp}/mds", "workers=1",
                                          "holdout.fraction=0"])
        jsonl.sources = [dataclasses.replace(jsonl.sources[0], name="all", holdout=jsonl.holdout, inputs=[
            dataclasses.replace(jsonl.sources[0].inputs[0], format="jsonl", path=str(corpus), include=["*.jsonl"],
                                max_files=0)])]
        unit = plan_units(jsonl.sources[0], jsonl.files_per_unit)[0]

        def worker_pass(name: str) -> tuple[float, dict]:
            job = UnitJob(unit, jsonl.tokenizer, jsonl.max_seq_len, jsonl.shard_size_limit, Path(tmp) / name,
                          Path(tmp) / f"{name}-eval", 0.0, {}, jsonl.on_bad_file)
            began = time.perf_counter()
            stats, _ = prepare_unit(job)
            return time.perf_counter() - began, stats

        worker_pass("warm")  # the worker's tokenizer load, paid once per worker
        worker_s, stats = worker_pass("unit")
        start = time.perf_counter()
        prepare(jsonl, progress=False)
        end_s = time.perf_counter() - start
        shutil.rmtree(f"{tmp}/mds")
    tokens = stats["tokens"] - 2 * stats["samples"]  # without the [CLS]/[SEP] framing the reference lacks
    raw_rate = raw_tokens / raw_s
    summary = {"recipe": args.recipe, "documents": len(texts), "megabytes": sum(map(len, texts)) / 1e6,
               "read_recipe_inputs_s": read_s, "raw_tokens": raw_tokens, "raw_s": raw_s,
               "raw_tokens_per_s": raw_rate, "prep_tokens": stats["tokens"], "worker_s": worker_s,
               "worker_tokens_per_s": tokens / worker_s, "worker_share_of_raw": tokens / worker_s / raw_rate,
               "end_to_end_s": end_s, "end_to_end_tokens_per_s": tokens / end_s,
               "end_to_end_share_of_raw": tokens / end_s / raw_rate}
    assert tokens == raw_tokens, f"prep made {tokens} tokens of the texts, the tokenizer alone {raw_tokens}"
    summary["core_hours_for_2T"] = 2e12 / summary["worker_tokens_per_s"] / 3600
    print(f"{len(texts):,} documents, {summary['megabytes']:.0f} MB, {raw_tokens:,} tokens, on one core:\n"
          f"  tokenizer alone   {raw_rate:>10,.0f} tokens/s\n"
          f"  prep, per worker  {summary['worker_tokens_per_s']:>10,.0f} tokens/s "
          f"({summary['worker_share_of_raw']:.0%} of it; 2T tokens = {summary['core_hours_for_2T']:,.0f} "
          f"core-hours)\n"
          f"  prep, end to end  {summary['end_to_end_tokens_per_s']:>10,.0f} tokens/s "
          f"({summary['end_to_end_share_of_raw']:.0%}; {end_s:.1f} s, of which ~{end_s - worker_s:.1f} s fixed: "
          f"planning, the worker's start, indexes)\n"
          f"  reading the recipe's own inputs (files read, Python parsed for docstrings) took {read_s:.1f} s, "
          f"{read_s / raw_s:.1f}x the tokenizer's time")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
