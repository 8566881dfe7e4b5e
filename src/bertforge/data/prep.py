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
import itertools
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

import xxhash
from tqdm import tqdm

from bertforge.atomic import write_text_atomic
from bertforge.data.integrity import SHARD_HASH
from bertforge.data.provenance import source_provenance, tokenizer_fingerprint, unit_provenance
from bertforge.data.recipe import PrepRecipe
from bertforge.data.sources import Unit, check_text_fields, plan_units, read_unit
from bertforge.data.tokenizer import load_tokenizer, special_ids, tokenizer_size_and_specials
from bertforge.errors import ConfigError, DataError
from bertforge.folder_lock import acquire_lock, release_lock
from bertforge.paths import keyed_folder
from bertforge.store import RemoteFolder, is_remote

_BATCH = 256
PIECE_CHARS = 1 << 20
"""Longest text handed to the tokenizer at once: a longer document is tokenized in pieces cut before a space
between words (where the byte-level pre-tokenizer splits anyway, so the ids are the same), because the tokenizer's memory grows
with its input: one 50 MB single-line document took a worker to 9.2 GB."""


@functools.cache
def _worker_store(uri: str) -> RemoteFolder:
    """One store connection per worker process and source, for all the units it uploads."""
    return RemoteFolder(uri)


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
    remote: str | None = None
    """The source's folder in the object store (``out_dir/NAME``), when out_dir is one: the unit is uploaded there
    as it completes (its unit.json last) and its shards deleted from the local staging folder."""


def held_out(text: str, fraction: float) -> bool:
    """Whether a document goes to the held-out split: a hash of its text, not its place in the input, decides."""
    return fraction > 0 and xxhash.xxh64_intdigest(text.encode("utf-8", "surrogatepass")) < fraction * 2**64


def prepare_unit(job: UnitJob) -> tuple[dict, dict]:
    """Tokenize one unit into its training shards and held-out shards; returns the stats of each."""
    import numpy as np  # noqa: PLC0415 (torch-free: `bertforge slurm prep` imports this)
    from streaming import MDSWriter  # noqa: PLC0415 (torch-free: `bertforge slurm prep` imports this)

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
            # Most documents are one piece: their ids as they come, no copy.
            out.append(flat[at].ids if len(doc) == 1 else [i for e in flat[at:at + len(doc)] for i in e.ids])
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
    stats = prepare_unit(job)
    if job.remote is not None:
        upload_unit(job)
    return job.unit.source, job.unit.key, stats


def upload_unit(job: UnitJob) -> None:
    """A finished unit into the store: its held-out part, then its part with unit.json last, so that a unit is
    complete in the store exactly when its unit.json is there. Whatever an earlier, cut-off upload left is deleted
    first. Locally only the small index.json and unit.json stay (the merge reads them)."""
    source = _worker_store(job.remote)
    for part, local in ((f"eval/parts/{job.unit.key}", job.eval_part_dir), (f"parts/{job.unit.key}", job.part_dir)):
        if stale := list(source.sizes(part)):
            source.delete(stale)
        if local.is_dir():
            source.upload_tree(local, part, last=("unit.json",))
            for shard in local.iterdir():
                if shard.name not in ("index.json", "unit.json"):
                    shard.unlink()


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


@dataclass(frozen=True)
class Share:
    """One array task's share of a prep spread over a cluster: the units whose place in the recipe's unit order
    (all sources, in order) is ``index`` modulo ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ConfigError(f"--share {self.index}/{self.count}: the index must be in 0..{self.count - 1}")

    @classmethod
    def parse(cls, text: str) -> Share:
        """``INDEX/COUNT``, as `prep --share` takes it."""
        index, _, count = text.partition("/")
        if not (index.isdigit() and count.isdigit()):
            raise ConfigError(f"--share must be INDEX/COUNT (e.g. 3/16), got {text!r}")
        return cls(int(index), int(count))

    def takes(self, place: int) -> bool:
        return place % self.count == self.index


def staging_folder(recipe: PrepRecipe) -> Path:
    """Where units are made: ``out_dir`` itself, or for an ``out_dir`` in an object store, ``staging_dir`` (default:
    a folder per store URL under the system's temporary folder)."""
    if not is_remote(recipe.out_dir):
        return Path(recipe.out_dir)
    return Path(recipe.staging_dir) if recipe.staging_dir else keyed_folder(recipe.out_dir, None, "bertforge-prep")


def prepare(recipe: PrepRecipe, *, progress: bool = True, force: bool = False, share: Share | None = None,
            work: bool = True, finish: bool = True) -> dict[str, dict]:
    """Prepare every source; returns each source's stats (also written to ``<out_dir>/<source>/stats.json``).

    ``force`` prepares again the units that were made from other inputs, another tokenizer or another length,
    instead of refusing them. Spread over a cluster (`prep --slurm`), each array task makes its ``share`` of the
    units and does not ``finish`` (returns {}); the last step does no ``work`` and finishes: it writes each
    source's index.json and stats.json, or names the units that are still missing."""
    load_tokenizer(recipe.tokenizer)  # fail before forking workers if the tokenizer is missing
    remote = _checked_store(recipe)
    out_dir = staging_folder(recipe)
    units_by_source = {src.name: plan_units(src, recipe.files_per_unit, out_dir) for src in recipe.sources}
    for units in units_by_source.values():
        check_text_fields(units)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / (f"prep-share{share.index}.lock" if share else "prep.lock")
    acquire_lock(lock, "bertforge prep")
    try:
        todo, done = _units_to_prepare(recipe, units_by_source, out_dir, remote, force, share)
        if work:
            _run_units(recipe, [job for _, job in todo], done, progress)
        if not finish:
            return {}
        return _finish(recipe, units_by_source, out_dir, remote, done)
    finally:
        release_lock(lock)


def unfinished(recipe: PrepRecipe, shares: int | None = None) -> list[str] | list[int]:
    """The units (source/key) not yet finished in ``out_dir``; with ``shares``, the shares that hold any."""
    remote = _checked_store(recipe)
    out_dir = staging_folder(recipe)
    units_by_source = {src.name: plan_units(src, recipe.files_per_unit, out_dir) for src in recipe.sources}
    todo, _ = _units_to_prepare(recipe, units_by_source, out_dir, remote, force=False)
    if shares is None:
        return [f"{job.unit.source}/{job.unit.key}" for _, job in todo]
    return sorted({place % shares for place, _ in todo})


def _checked_store(recipe: PrepRecipe) -> RemoteFolder | None:
    """``out_dir`` as a store folder, its bucket checked; None for a local out_dir."""
    if not is_remote(recipe.out_dir):
        return None
    remote = RemoteFolder(recipe.out_dir)
    remote.check("out_dir")
    return remote


def _units_to_prepare(recipe: PrepRecipe, units_by_source: dict[str, list], out_dir: Path, remote: RemoteFolder | None,
          force: bool, share: Share | None = None) -> tuple[list[tuple[int, UnitJob]], dict]:
    """The units to make (with their place in the recipe's unit order) and the stats of those already made; with
    ``share``, of that share's units only (other array tasks are busy with the rest).

    With ``remote``, the store is the record: a unit is made when its unit.json is there (its unit.json and
    index.json are fetched into the staging folder for the merge); a unit finished locally but not uploaded whole
    is made again."""
    fingerprint = tokenizer_fingerprint(recipe.tokenizer)
    todo, done, places = [], {}, itertools.count()
    for src in recipe.sources:
        units = units_by_source[src.name]
        if not units:
            raise FileNotFoundError(f"source '{src.name}': its inputs match no files; check 'path' and 'include'")
        provenance = unit_provenance(recipe, fingerprint, src.holdout.fraction)
        (out_dir / src.name / "parts").mkdir(parents=True, exist_ok=True)
        if src.holdout.fraction > 0:
            (out_dir / src.name / "eval" / "parts").mkdir(parents=True, exist_ok=True)
        source_store = remote.child(src.name) if remote is not None else None
        stored = source_store.listing() if source_store is not None else {}
        for unit in units:
            place = next(places)
            if share is not None and not share.takes(place):
                continue
            part_dir = out_dir / src.name / "parts" / unit.key
            eval_part_dir = out_dir / src.name / "eval" / "parts" / unit.key
            if source_store is not None:
                _fetch_stored_unit(source_store, unit.key, part_dir, eval_part_dir, stored)
            stats = _done_unit_stats(unit, part_dir, provenance, force)
            if stats is None:
                todo.append((place, UnitJob(unit, recipe.tokenizer, recipe.max_seq_len, recipe.shard_size_limit,
                                            part_dir, eval_part_dir, src.holdout.fraction, provenance,
                                            recipe.on_bad_file, source_store.uri if source_store else None)))
            else:
                done[(src.name, unit.key)] = stats
    return todo, done


def _fetch_stored_unit(source: RemoteFolder, key: str, part_dir: Path, eval_part_dir: Path,
                       stored: dict[str, tuple[int, str]]) -> None:
    """Make the staging folder agree with the store about one unit: its unit.json and index.json (and its
    held-out part's index.json) as the store holds them (fetched unless the same bytes are here, which a staging
    folder left by another prep of the same URL may not hold), nothing of it when the store does not hold it whole."""
    if f"parts/{key}/unit.json" not in stored:
        shutil.rmtree(part_dir, ignore_errors=True)
        shutil.rmtree(eval_part_dir, ignore_errors=True)
        return
    for name, local in ((f"eval/parts/{key}/index.json", eval_part_dir / "index.json"),
                        (f"parts/{key}/index.json", part_dir / "index.json"),
                        (f"parts/{key}/unit.json", part_dir / "unit.json")):
        if name in stored:
            source.sync_down(name, local, stored[name][1])


def _run_units(recipe: PrepRecipe, todo: list[UnitJob], done: dict, progress: bool) -> None:
    """Make the units of ``todo`` in parallel worker processes, recording their stats in ``done``."""
    start, docs, tokens = time.time(), 0, 0
    bar = tqdm(total=len(todo), unit="unit", desc="prep", disable=not progress)
    if todo:
        context = multiprocessing.get_context("spawn")
        workers = max(1, min(recipe.workers, len(todo)))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
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
                # A worker was killed (the OOM killer, a signal): the pool cannot say which. A unit in progress
                # has its .tmp folder and no finished part; a worker killed between two units had not yet made
                # the next one's .tmp, and then the units it was taking are the first unfinished ones, in the
                # order they were handed out.
                unfinished = [job for job in todo if not job.part_dir.exists()]
                running = [job for job in unfinished if job.part_dir.with_name(job.part_dir.name + ".tmp").exists()]
                named = ", ".join(f"{job.unit.source}/{job.unit.key}" for job in running or unfinished[:workers])
                raise DataError(f"a prep worker died (killed by a signal, often the out-of-memory killer) while "
                                f"preparing unit(s) {named}; finished units are kept: run the prep again to "
                                f"resume, with fewer 'workers' if memory ran out") from None
    bar.close()


def _finish(recipe: PrepRecipe, units_by_source: dict[str, list], out_dir: Path, remote: RemoteFolder | None,
            done: dict) -> dict[str, dict]:
    """Each source's index.json (every unit's shards, in unit order) and stats.json, written last (and uploaded
    last, for an object store: a reader finds a source's index only once all of it is there)."""
    missing = [f"{src.name}/{u.key}" for src in recipe.sources for u in units_by_source[src.name]
               if (src.name, u.key) not in done]
    if missing:
        raise DataError(f"{len(missing)} unit(s) of {recipe.out_dir} are not finished ({', '.join(missing[:5])}"
                        f"{' ...' if len(missing) > 5 else ''}): an array task failed or was cut off; submit the "
                        f"same `bertforge prep RECIPE --slurm ... --submit` again (it reruns only the array tasks "
                        f"with unfinished units), or run `bertforge prep RECIPE` here")
    fingerprint = tokenizer_fingerprint(recipe.tokenizer)
    vocab_size, _ = tokenizer_size_and_specials(recipe.tokenizer)
    results = {}
    for src in recipe.sources:
        keys = [u.key for u in units_by_source[src.name]]
        source_dir = out_dir / src.name
        record = source_provenance(recipe, src.name, fingerprint, vocab_size)
        stats = _merge_stats([done[(src.name, k)][0] for k in keys], recipe.max_seq_len)
        if not stats["documents"]:  # before its index: an empty dataset would only fail when a run reads it
            skipped = ", ".join(f"{n} {why}" for why, n in stats["skipped"].items()) or "nothing skipped"
            raise DataError(f"source '{src.name}': its inputs gave no document ({skipped}); every file it read "
                            f"was empty or skipped: check its inputs' 'path', 'include' and 'text_field'")
        stats.update(name=src.name, kind=src.kind, max_seq_len=recipe.max_seq_len, provenance=record)
        _merge_index(source_dir, [k for k in keys if done[(src.name, k)][0]["samples"]])
        written = ["index.json", "stats.json"]
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
            written = ["eval/index.json", "eval/stats.json", *written]
            stats["holdout"] = {**dataclasses.asdict(src.holdout), "documents": held_stats["documents"],
                                "tokens": held_stats["tokens"]}
        write_text_atomic(source_dir / "stats.json", json.dumps(stats, indent=1) + "\n")
        if remote is not None:
            source_store = remote.child(src.name)
            for name in written:
                source_store.upload(source_dir / name, name)
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
