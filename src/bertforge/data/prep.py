"""`bertforge prep`: text sources -> tokenized MDS datasets, in parallel, deterministic and resumable.

Each source is cut into units (a few hundred files, or one JSONL/Parquet file). A worker writes a unit's shards to
``parts/<unit>.tmp`` and renames the folder when complete, so a killed prep restarts at the first unfinished unit
and a reader never sees half a shard. A unit's output depends only on its input, so the result is the same byte
for byte whatever the number of workers or the order they finish in. The source's ``index.json`` (the list of
every part's shards, in unit order) and ``stats.json`` are written last, atomically.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.data.recipe import PrepRecipe
from bertforge.data.sources import Unit, check_text_fields, plan_units, read_unit
from bertforge.data.tokenizer import load_tokenizer, special_ids
from bertforge.folder_lock import acquire_lock, release_lock

_BATCH = 256


@functools.cache
def _worker_tokenizer(name: str):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return load_tokenizer(name)


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def frame_chunks(ids: list[int], cls: int, sep: int, max_seq_len: int) -> list[list[int]]:
    """[CLS] doc [SEP], or for a document too long for one sequence, several framed chunks of it."""
    body = max_seq_len - 2
    return [[cls, *ids[start:start + body], sep] for start in range(0, len(ids), body)]


def _new_stats(max_seq_len: int) -> dict:
    return {"documents": 0, "samples": 0, "tokens": 0, "chunked_documents": 0, "skipped": {},
            "length_histogram": {str(1 << k): 0 for k in range(max_seq_len.bit_length() + 1)}}


def _count_length(stats: dict, length: int) -> None:
    stats["length_histogram"][str(1 << max(length - 1, 0).bit_length())] += 1


def prepare_unit(unit: Unit, tokenizer: str, max_seq_len: int, size_limit: int, part_dir: Path) -> dict:
    import numpy as np
    from streaming import MDSWriter

    tok = _worker_tokenizer(tokenizer)
    ids = special_ids(tok)
    dtype = token_dtype(len(tok))
    stats = _new_stats(max_seq_len)
    skipped: Counter[str] = Counter()
    tmp = part_dir.with_name(part_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def flush(writer, texts: list[str]) -> None:
        for encoding in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
            if not encoding.ids:
                skipped["empty after tokenization"] += 1
                continue
            chunks = frame_chunks(encoding.ids, ids.cls, ids.sep, max_seq_len)
            stats["documents"] += 1
            stats["chunked_documents"] += len(chunks) > 1
            for chunk in chunks:
                writer.write({"tokens": np.asarray(chunk, dtype=dtype)})
                stats["samples"] += 1
                stats["tokens"] += len(chunk)
                _count_length(stats, len(chunk))

    with MDSWriter(out=str(tmp), columns={"tokens": f"ndarray:{dtype}"}, compression="zstd",
                   size_limit=size_limit) as writer:
        batch: list[str] = []
        for text, reason in read_unit(unit):
            if reason:
                skipped[reason] += 1
                continue
            batch.append(text)
            if len(batch) == _BATCH:
                flush(writer, batch)
                batch = []
        flush(writer, batch)
    stats["skipped"] = dict(sorted(skipped.items()))
    (tmp / "unit.json").write_text(json.dumps({"fingerprint": unit.fingerprint(), "stats": stats}, indent=1))
    os.replace(tmp, part_dir)
    return stats


def _prepare_unit_star(args) -> tuple[str, str, dict]:
    unit = args[0]
    return unit.source, unit.key, prepare_unit(*args)


def _merge_stats(parts: list[dict], max_seq_len: int) -> dict:
    total = _new_stats(max_seq_len)
    skipped: Counter[str] = Counter()
    for part in parts:
        for key in ("documents", "samples", "tokens", "chunked_documents"):
            total[key] += part[key]
        skipped.update(part["skipped"])
        for bucket, count in part["length_histogram"].items():
            total["length_histogram"][bucket] += count
    total["skipped"] = dict(sorted(skipped.items()))
    return total


def _merge_index(source_dir: Path, keys: list[str]) -> None:
    shards = []
    for key in keys:
        index = json.loads((source_dir / "parts" / key / "index.json").read_text())
        for shard in index["shards"]:
            for part in ("raw_data", "zip_data"):
                if shard.get(part):
                    shard[part]["basename"] = f"parts/{key}/{shard[part]['basename']}"
            shards.append(shard)
    write_text_atomic(source_dir / "index.json", json.dumps({"version": 2, "shards": shards}, indent=1))


def _done_unit_stats(unit: Unit, part_dir: Path) -> dict | None:
    meta = part_dir / "unit.json"
    if not meta.is_file():
        return None
    recorded = json.loads(meta.read_text())
    if recorded["fingerprint"] != unit.fingerprint():
        raise RuntimeError(f"{part_dir} was prepared from different input files than the recipe now lists; "
                           f"delete {part_dir.parent.parent} to prepare this source again")
    return recorded["stats"]


def prepare(recipe: PrepRecipe, *, progress: bool = True) -> dict[str, dict]:
    """Prepare every source; returns each source's stats (also written to ``<out_dir>/<source>/stats.json``)."""
    load_tokenizer(recipe.tokenizer)  # fail before forking workers if the tokenizer is missing
    out_dir = Path(recipe.out_dir)
    units_by_source = {src.name: plan_units(src, recipe.files_per_unit) for src in recipe.sources}
    for units in units_by_source.values():
        check_text_fields(units)
    lock = out_dir / "prep.lock"
    acquire_lock(lock, "bertforge prep")
    try:
        return _prepare(recipe, units_by_source, out_dir, progress)
    finally:
        release_lock(lock)


def _prepare(recipe: PrepRecipe, units_by_source: dict[str, list], out_dir: Path, progress: bool) -> dict[str, dict]:
    from tqdm import tqdm

    todo, done = [], {}
    for name, units in units_by_source.items():
        if not units:
            raise FileNotFoundError(f"source '{name}': its inputs match no files; check 'path' and 'include'")
        (out_dir / name / "parts").mkdir(parents=True, exist_ok=True)
        for unit in units:
            part_dir = out_dir / name / "parts" / unit.key
            stats = _done_unit_stats(unit, part_dir)
            if stats is None:
                todo.append((unit, recipe.tokenizer, recipe.max_seq_len, recipe.shard_size_limit, part_dir))
            else:
                done[(name, unit.key)] = stats

    start, docs, tokens = time.time(), 0, 0
    bar = tqdm(total=len(todo), unit="unit", desc="prep", disable=not progress)
    if todo:
        context = multiprocessing.get_context("spawn")
        with context.Pool(max(1, min(recipe.workers, len(todo)))) as pool:
            for name, key, stats in pool.imap_unordered(_prepare_unit_star, todo):
                done[(name, key)] = stats
                docs, tokens = docs + stats["documents"], tokens + stats["tokens"]
                elapsed = max(time.time() - start, 1e-9)
                bar.set_postfix_str(f"{docs / elapsed:,.0f} docs/s {tokens / elapsed:,.0f} tok/s")
                bar.update()
    bar.close()

    results = {}
    for src in recipe.sources:
        keys = [u.key for u in units_by_source[src.name]]
        source_dir = out_dir / src.name
        stats = _merge_stats([done[(src.name, k)] for k in keys], recipe.max_seq_len)
        stats.update(name=src.name, kind=src.kind, max_seq_len=recipe.max_seq_len)
        nonempty = [k for k in keys if done[(src.name, k)]["samples"]]
        _merge_index(source_dir, nonempty)
        write_text_atomic(source_dir / "stats.json", json.dumps(stats, indent=1) + "\n")
        results[src.name] = stats
    return results


def summarize(results: dict[str, dict]) -> str:
    lines = []
    for name, stats in results.items():
        skipped = ", ".join(f"{n} {why}" for why, n in stats["skipped"].items()) or "none"
        lines.append(f"{name} ({stats['kind']}): {stats['documents']:,} documents, {stats['tokens']:,} tokens, "
                     f"{stats['samples']:,} samples ({stats['chunked_documents']:,} documents chunked); "
                     f"skipped: {skipped}")
    return "\n".join(lines)
