"""`bertforge prep`: text sources -> tokenized MDS datasets, in parallel, deterministic and resumable.

Each source is cut into units (a few hundred files, or one JSONL/Parquet file). A worker writes a unit's shards to
``parts/<unit>.tmp`` and renames the folder when complete, so a killed prep restarts at the first unfinished unit
and a reader never sees half a shard. A unit's output depends only on its input, so the result is the same byte
for byte whatever the number of workers or the order they finish in. The source's ``index.json`` (the list of
every part's shards, in unit order) and ``stats.json`` are written last, atomically.

Every shard carries an ``xxh3_64`` hash of its compressed and raw bytes in the index (checked when a shard is
decompressed for reading and by `bertforge verify`), and every unit and source records the tokenizer and row
length that made it (provenance.py): a rerun with another tokenizer or length refuses to reuse the old units.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.data.integrity import SHARD_HASH
from bertforge.data.provenance import source_provenance, tokenizer_fingerprint, unit_provenance
from bertforge.data.recipe import PrepRecipe
from bertforge.data.sources import Unit, check_text_fields, plan_units, read_unit
from bertforge.data.tokenizer import load_tokenizer, special_ids, tokenizer_size_and_specials
from bertforge.errors import DataError
from bertforge.folder_lock import acquire_lock, release_lock
from bertforge.schema import ConfigError

_BATCH = 256
PIECE_CHARS = 1 << 20
"""Longest text handed to the tokenizer at once: a longer document is tokenized in pieces cut before a space
between words (where the byte-level pre-tokenizer splits anyway, so the ids are the same), because the tokenizer's memory grows
with its input: one 50 MB single-line document took a worker to 9.2 GB."""


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
    return {"documents": 0, "samples": 0, "tokens": 0, "chunked_documents": 0, "skipped": {}, "bad_files": [],
            "length_histogram": {str(1 << k): 0 for k in range(max_seq_len.bit_length() + 1)}}


def _count_length(stats: dict, length: int) -> None:
    stats["length_histogram"][str(1 << max(length - 1, 0).bit_length())] += 1


def tokenizer_pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """``text`` cut into pieces of at most ``limit`` characters. A cut goes just before a single space between two
    non-space characters ("word| next"), where the byte-level pre-tokenizer splits anyway (a cut inside a run of
    whitespace would merge differently); a text with no such space within the last half of a piece is cut hard."""
    pieces, start = [], 0
    while len(text) - start > limit:
        low, cut = start + limit // 2, start + limit
        cut = text.rfind(" ", low, cut)
        while cut > low and (text[cut - 1].isspace() or text[cut + 1].isspace()):
            cut = text.rfind(" ", low, cut)
        cut = cut if cut > low else start + limit
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def prepare_unit(unit: Unit, tokenizer: str, max_seq_len: int, size_limit: int, part_dir: Path,
                 provenance: dict, on_bad_file: str) -> dict:
    import numpy as np
    from streaming import MDSWriter

    tok = _worker_tokenizer(tokenizer)
    ids = special_ids(tok)
    dtype = token_dtype(len(tok))
    stats = _new_stats(max_seq_len)
    skipped: Counter[str] = Counter()
    tmp = part_dir.with_name(part_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)

    def encode(texts: list[str]) -> list[list[int]]:
        pieces = [tokenizer_pieces(text) for text in texts]
        flat = tok.backend_tokenizer.encode_batch([p for doc in pieces for p in doc], add_special_tokens=False)
        out, at = [], 0
        for doc in pieces:
            out.append([i for encoding in flat[at:at + len(doc)] for i in encoding.ids])
            at += len(doc)
        return out

    def flush(writer, texts: list[str]) -> None:
        for doc_ids in encode(texts):
            if not doc_ids:
                skipped["empty after tokenization"] += 1
                continue
            chunks = frame_chunks(doc_ids, ids.cls, ids.sep, max_seq_len)
            stats["documents"] += 1
            stats["chunked_documents"] += len(chunks) > 1
            for chunk in chunks:
                writer.write({"tokens": np.asarray(chunk, dtype=dtype)})
                stats["samples"] += 1
                stats["tokens"] += len(chunk)
                _count_length(stats, len(chunk))

    with MDSWriter(out=str(tmp), columns={"tokens": f"ndarray:{dtype}"}, compression="zstd",
                   hashes=[SHARD_HASH], size_limit=size_limit) as writer:
        batch: list[str] = []
        bad_files: list[str] = []
        for text, reason in read_unit(unit, bad_files):
            if bad_files and on_bad_file == "fail":
                raise DataError(f"source '{unit.source}': cannot read {bad_files[0]}; fix or remove the file, or set "
                                f"on_bad_file: skip in the recipe to skip such files")
            if reason:
                skipped[reason] += 1
                continue
            batch.append(text)
            if len(batch) == _BATCH:
                flush(writer, batch)
                batch = []
        flush(writer, batch)
    stats["skipped"] = dict(sorted(skipped.items()))
    stats["bad_files"] = bad_files
    (tmp / "unit.json").write_text(json.dumps({"fingerprint": unit.fingerprint(), "provenance": provenance,
                                               "stats": stats}, indent=1))
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
        total["bad_files"] += part.get("bad_files", [])
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


def _done_unit_stats(unit: Unit, part_dir: Path, provenance: dict, force: bool) -> dict | None:
    """A finished unit's stats, or None when it must be (re)made; a unit made differently is refused unless
    ``force``, which deletes it."""
    meta = part_dir / "unit.json"
    if not meta.is_file():
        return None
    recorded = json.loads(meta.read_text())
    if recorded["fingerprint"] != unit.fingerprint():
        problem = "from different input files than the recipe now lists"
    elif recorded.get("provenance") != provenance:
        was = recorded.get("provenance") or {}
        problem = (f"with tokenizer {was.get('tokenizer_fingerprint', '(not recorded)')} and max_seq_len "
                   f"{was.get('max_seq_len', '(not recorded)')}, the recipe now gives tokenizer "
                   f"{provenance['tokenizer_fingerprint']} and max_seq_len {provenance['max_seq_len']}")
    else:
        return recorded["stats"]
    if not force:
        raise ConfigError(f"{part_dir} was prepared {problem}; delete {part_dir.parent.parent} or run "
                          f"`bertforge prep RECIPE --force` to prepare it again")
    shutil.rmtree(part_dir)
    return None


def prepare(recipe: PrepRecipe, *, progress: bool = True, force: bool = False) -> dict[str, dict]:
    """Prepare every source; returns each source's stats (also written to ``<out_dir>/<source>/stats.json``).

    ``force`` prepares again the units that were made from other inputs, another tokenizer or another length,
    instead of refusing them."""
    load_tokenizer(recipe.tokenizer)  # fail before forking workers if the tokenizer is missing
    out_dir = Path(recipe.out_dir)
    units_by_source = {src.name: plan_units(src, recipe.files_per_unit) for src in recipe.sources}
    for units in units_by_source.values():
        check_text_fields(units)
    lock = out_dir / "prep.lock"
    acquire_lock(lock, "bertforge prep")
    try:
        return _prepare(recipe, units_by_source, out_dir, progress, force)
    finally:
        release_lock(lock)


def _prepare(recipe: PrepRecipe, units_by_source: dict[str, list], out_dir: Path, progress: bool,
             force: bool) -> dict[str, dict]:
    from tqdm import tqdm

    fingerprint = tokenizer_fingerprint(recipe.tokenizer)
    vocab_size, _ = tokenizer_size_and_specials(recipe.tokenizer)
    provenance = unit_provenance(recipe, fingerprint)
    todo, done = [], {}
    for name, units in units_by_source.items():
        if not units:
            raise FileNotFoundError(f"source '{name}': its inputs match no files; check 'path' and 'include'")
        (out_dir / name / "parts").mkdir(parents=True, exist_ok=True)
        for unit in units:
            part_dir = out_dir / name / "parts" / unit.key
            stats = _done_unit_stats(unit, part_dir, provenance, force)
            if stats is None:
                todo.append((unit, recipe.tokenizer, recipe.max_seq_len, recipe.shard_size_limit, part_dir,
                             provenance, recipe.on_bad_file))
            else:
                done[(name, unit.key)] = stats

    start, docs, tokens = time.time(), 0, 0
    bar = tqdm(total=len(todo), unit="unit", desc="prep", disable=not progress)
    if todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max(1, min(recipe.workers, len(todo))), mp_context=context) as pool:
            futures = [pool.submit(_prepare_unit_star, args) for args in todo]
            try:
                for future in as_completed(futures):
                    name, key, stats = future.result()
                    done[(name, key)] = stats
                    docs, tokens = docs + stats["documents"], tokens + stats["tokens"]
                    elapsed = max(time.time() - start, 1e-9)
                    bar.set_postfix_str(f"{docs / elapsed:,.0f} docs/s {tokens / elapsed:,.0f} tok/s")
                    bar.update()
            except BrokenProcessPool:
                # A worker was killed (the OOM killer, a signal): the pool cannot say which, but a unit in
                # progress is the one whose .tmp folder exists and whose part is not finished.
                running = [f"{job[0].source}/{job[0].key}" for job in todo
                           if job[4].with_name(job[4].name + ".tmp").exists() and not job[4].exists()]
                raise DataError(f"a prep worker died (killed by a signal, often the out-of-memory killer) while "
                                f"preparing unit(s) {', '.join(running) or '(none started)'}; finished units are "
                                f"kept: run the prep again to resume, with fewer 'workers' if memory ran out"
                                ) from None
    bar.close()

    results = {}
    for src in recipe.sources:
        keys = [u.key for u in units_by_source[src.name]]
        source_dir = out_dir / src.name
        stats = _merge_stats([done[(src.name, k)] for k in keys], recipe.max_seq_len)
        stats.update(name=src.name, kind=src.kind, max_seq_len=recipe.max_seq_len,
                     provenance=source_provenance(recipe, src.name, fingerprint, vocab_size))
        nonempty = [k for k in keys if done[(src.name, k)]["samples"]]
        _merge_index(source_dir, nonempty)
        write_text_atomic(source_dir / "stats.json", json.dumps(stats, indent=1) + "\n")
        results[src.name] = stats
    return results


def summarize(results: dict[str, dict]) -> str:
    lines = []
    for name, stats in results.items():
        skipped = ", ".join(f"{n} {why}" for why, n in stats["skipped"].items()) or "none"
        if stats["bad_files"]:
            skipped += f" (unreadable: {', '.join(stats['bad_files'][:3])}{' ...' if len(stats['bad_files']) > 3 else ''})"
        lines.append(f"{name} ({stats['kind']}): {stats['documents']:,} documents, {stats['tokens']:,} tokens, "
                     f"{stats['samples']:,} samples ({stats['chunked_documents']:,} documents chunked); "
                     f"skipped: {skipped}")
    return "\n".join(lines)
