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

import contextlib
import dataclasses
import functools
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
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


@dataclass(frozen=True)
class UnitJob:
    """Everything a worker needs to prepare one unit."""

    unit: Unit
    tokenizer: str
    max_seq_len: int
    size_limit: int
    part_dir: Path
    """Where the unit's training shards go (``out_dir/NAME/parts/<unit>``)."""
    eval_part_dir: Path
    """Where its held-out shards go (``out_dir/NAME/eval/parts/<unit>``)."""
    holdout: float
    provenance: dict
    on_bad_file: str


def held_out(text: str, fraction: float) -> bool:
    """Whether a document goes to the held-out split: a hash of its text, not its place in the input, decides."""
    import xxhash

    return fraction > 0 and xxhash.xxh64_intdigest(text.encode("utf-8", "surrogatepass")) < fraction * 2**64


def prepare_unit(job: UnitJob) -> tuple[dict, dict]:
    """Tokenize one unit into its training shards and held-out shards; returns the stats of each."""
    import numpy as np
    from streaming import MDSWriter

    tok = _worker_tokenizer(job.tokenizer)
    ids = special_ids(tok)
    dtype = token_dtype(len(tok))
    stats, eval_stats = _new_stats(job.max_seq_len), _new_stats(job.max_seq_len)
    skipped: Counter[str] = Counter()
    tmp = job.part_dir.with_name(job.part_dir.name + ".tmp")
    eval_tmp = job.eval_part_dir.with_name(job.eval_part_dir.name + ".tmp")
    for stale in (tmp, eval_tmp, job.eval_part_dir):  # a unit killed midway is made again from scratch
        shutil.rmtree(stale, ignore_errors=True)

    def encode(texts: list[str]) -> list[list[int]]:
        pieces = [tokenizer_pieces(text) for text in texts]
        flat = tok.backend_tokenizer.encode_batch([p for doc in pieces for p in doc], add_special_tokens=False)
        out, at = [], 0
        for doc in pieces:
            out.append([i for encoding in flat[at:at + len(doc)] for i in encoding.ids])
            at += len(doc)
        return out

    def flush(writers, texts: list[str]) -> None:
        for text, doc_ids in zip(texts, encode(texts)):
            if not doc_ids:
                skipped["empty after tokenization"] += 1
                continue
            split = held_out(text, job.holdout)
            writer, counts = (writers[1], eval_stats) if split else (writers[0], stats)
            chunks = frame_chunks(doc_ids, ids.cls, ids.sep, job.max_seq_len)
            counts["documents"] += 1
            counts["chunked_documents"] += len(chunks) > 1
            for chunk in chunks:
                writer.write({"tokens": np.asarray(chunk, dtype=dtype)})
                counts["samples"] += 1
                counts["tokens"] += len(chunk)
                _count_length(counts, len(chunk))

    def mds_writer(out: Path):
        return MDSWriter(out=str(out), columns={"tokens": f"ndarray:{dtype}"}, compression="zstd",
                         hashes=[SHARD_HASH], size_limit=job.size_limit)

    with contextlib.ExitStack() as stack:
        writers = (stack.enter_context(mds_writer(tmp)),
                   stack.enter_context(mds_writer(eval_tmp)) if job.holdout > 0 else None)
        batch: list[str] = []
        bad_files: list[str] = []
        for text, reason in read_unit(job.unit, bad_files):
            if bad_files and job.on_bad_file == "fail":
                raise DataError(f"source '{job.unit.source}': cannot read {bad_files[0]}; fix or remove the file, "
                                f"or set on_bad_file: skip in the recipe to skip such files")
            if reason:
                skipped[reason] += 1
                continue
            batch.append(text)
            if len(batch) == _BATCH:
                flush(writers, batch)
                batch = []
        flush(writers, batch)
    stats["skipped"] = dict(sorted(skipped.items()))
    stats["bad_files"] = bad_files
    (tmp / "unit.json").write_text(json.dumps({"fingerprint": job.unit.fingerprint(), "provenance": job.provenance,
                                               "stats": stats, "eval_stats": eval_stats}, indent=1))
    if job.holdout > 0:
        os.replace(eval_tmp, job.eval_part_dir)
    os.replace(tmp, job.part_dir)  # last: the unit is done when its part (with unit.json) exists
    return stats, eval_stats


def _prepare_unit_job(job: UnitJob) -> tuple[str, str, tuple[dict, dict]]:
    return job.unit.source, job.unit.key, prepare_unit(job)


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


def _done_unit_stats(unit: Unit, part_dir: Path, provenance: dict, force: bool) -> tuple[dict, dict] | None:
    """A finished unit's stats and held-out stats, or None when it must be (re)made; a unit made differently is
    refused unless ``force``, which deletes it."""
    meta = part_dir / "unit.json"
    if not meta.is_file():
        return None
    recorded = json.loads(meta.read_text())
    if recorded["fingerprint"] != unit.fingerprint():
        problem = "from different input files than the recipe now lists"
    elif recorded.get("provenance") != provenance:
        was = recorded.get("provenance") or {}
        problem = (f"with tokenizer {was.get('tokenizer_fingerprint', '(not recorded)')}, max_seq_len "
                   f"{was.get('max_seq_len', '(not recorded)')} and holdout {was.get('holdout', 0)}, the recipe now "
                   f"gives tokenizer {provenance['tokenizer_fingerprint']}, max_seq_len {provenance['max_seq_len']} "
                   f"and holdout {provenance.get('holdout', 0)}")
    else:
        return recorded["stats"], recorded.get("eval_stats") or _new_stats(provenance["max_seq_len"])
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
    todo, done = [], {}
    for src in recipe.sources:
        units = units_by_source[src.name]
        if not units:
            raise FileNotFoundError(f"source '{src.name}': its inputs match no files; check 'path' and 'include'")
        provenance = unit_provenance(recipe, fingerprint, src.holdout.fraction)
        (out_dir / src.name / "parts").mkdir(parents=True, exist_ok=True)
        if src.holdout.fraction > 0:
            (out_dir / src.name / "eval" / "parts").mkdir(parents=True, exist_ok=True)
        for unit in units:
            part_dir = out_dir / src.name / "parts" / unit.key
            stats = _done_unit_stats(unit, part_dir, provenance, force)
            if stats is None:
                todo.append(UnitJob(unit, recipe.tokenizer, recipe.max_seq_len, recipe.shard_size_limit, part_dir,
                                    out_dir / src.name / "eval" / "parts" / unit.key, src.holdout.fraction,
                                    provenance, recipe.on_bad_file))
            else:
                done[(src.name, unit.key)] = stats

    start, docs, tokens = time.time(), 0, 0
    bar = tqdm(total=len(todo), unit="unit", desc="prep", disable=not progress)
    if todo:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max(1, min(recipe.workers, len(todo))), mp_context=context) as pool:
            futures = [pool.submit(_prepare_unit_job, job) for job in todo]
            try:
                for future in as_completed(futures):
                    name, key, (stats, eval_stats) = future.result()
                    done[(name, key)] = stats, eval_stats
                    docs = docs + stats["documents"] + eval_stats["documents"]
                    tokens = tokens + stats["tokens"] + eval_stats["tokens"]
                    elapsed = max(time.time() - start, 1e-9)
                    bar.set_postfix_str(f"{docs / elapsed:,.0f} docs/s {tokens / elapsed:,.0f} tok/s")
                    bar.update()
            except BrokenProcessPool:
                # A worker was killed (the OOM killer, a signal): the pool cannot say which, but a unit in
                # progress is the one whose .tmp folder exists and whose part is not finished.
                running = [f"{job.unit.source}/{job.unit.key}" for job in todo
                           if job.part_dir.with_name(job.part_dir.name + ".tmp").exists()
                           and not job.part_dir.exists()]
                raise DataError(f"a prep worker died (killed by a signal, often the out-of-memory killer) while "
                                f"preparing unit(s) {', '.join(running) or '(none started)'}; finished units are "
                                f"kept: run the prep again to resume, with fewer 'workers' if memory ran out"
                                ) from None
    bar.close()

    results = {}
    for src in recipe.sources:
        keys = [u.key for u in units_by_source[src.name]]
        source_dir = out_dir / src.name
        record = source_provenance(recipe, src.name, fingerprint, vocab_size)
        stats = _merge_stats([done[(src.name, k)][0] for k in keys], recipe.max_seq_len)
        stats.update(name=src.name, kind=src.kind, max_seq_len=recipe.max_seq_len, provenance=record)
        _merge_index(source_dir, [k for k in keys if done[(src.name, k)][0]["samples"]])
        if src.holdout.fraction > 0:
            kept, total = [], 0
            for key in keys:  # whole units in unit order, up to the cap
                held = done[(src.name, key)][1]
                if held["samples"] and (not src.holdout.max_tokens or total < src.holdout.max_tokens):
                    kept.append(key)
                    total += held["tokens"]
            held_stats = _merge_stats([done[(src.name, k)][1] for k in kept], recipe.max_seq_len)
            held_stats.update(name=src.name, kind=src.kind, max_seq_len=recipe.max_seq_len, split="eval",
                              holdout=dataclasses.asdict(src.holdout), provenance=record)
            _merge_index(source_dir / "eval", kept)
            write_text_atomic(source_dir / "eval" / "stats.json", json.dumps(held_stats, indent=1) + "\n")
            stats["holdout"] = {**dataclasses.asdict(src.holdout), "documents": held_stats["documents"],
                                "tokens": held_stats["tokens"]}
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
