"""Integrity of a prepared dataset: every shard present, whole and unchanged, and the counts as prep wrote them.

zstd frames as streaming writes them carry no checksum, so a flipped bit mostly decompresses into other tokens
without an error. Prep therefore hashes every shard (``SHARD_HASH`` in index.json, computed by streaming's
writer); the loader has streaming check that hash whenever it decompresses a shard, the preflight checks that
every shard file is there with its recorded size before a run starts (a missing or truncated shard is named then,
not deep inside a DataLoader worker), and `bertforge verify` re-hashes everything. Standard library and xxhash
(a dependency of streaming) only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from bertforge.data.provenance import check_stream
from bertforge.errors import DataError
from bertforge.store import RemoteFolder

SHARD_HASH = "xxh3_64"
"""The hash of every shard's compressed and raw bytes that prep records in index.json."""


def _hash(algorithm: str, data: bytes) -> str:
    if algorithm.startswith("xxh"):
        return getattr(xxhash, algorithm)(data).hexdigest()
    return hashlib.new(algorithm, data).hexdigest()


def read_index(local: str | Path) -> dict:
    path = Path(local) / "index.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} is missing: {local} holds no prepared dataset; run `bertforge prep` for it") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); prepare this source again") from None


def shard_files(index: dict) -> list[dict]:
    """Every file of every shard as index.json lists it: basename, bytes, hashes; compressed first."""
    return [shard[part] for shard in index["shards"] for part in ("zip_data", "raw_data") if shard.get(part)]


def index_hash(index: dict) -> str | None:
    """The hash every shard of the index carries, for streaming's ``validate_hash``; None for data prepared
    without hashes."""
    stored = _stored_files(index)
    if stored and all(SHARD_HASH in (info.get("hashes") or {}) for info in stored):
        return SHARD_HASH
    return None


def check_prepared_stream(name: str, local: str | Path, tokenizer: str, fingerprint: str,
                          remote: str | None = None) -> dict:
    """A prepared stream is fit to read: each shard's stored file (its compressed form where it has one) exists
    with the size the index records, and its ids were made by ``tokenizer`` (whose ``tokenizer_fingerprint`` is
    ``fingerprint``). Returns the index, read once.

    With ``remote`` (an s3:// folder) the shards are checked in the store by one listing, and its index.json and
    stats.json are fetched into ``local`` (the stream's cache, where streaming then finds the index)."""
    sizes = _fetch_remote_index(name, remote, Path(local)) if remote is not None else None
    index = read_index(local)
    if sizes is None:
        sizes = {info["basename"]: (Path(local) / info["basename"]).stat().st_size
                 for info in _stored_files(index) if (Path(local) / info["basename"]).is_file()}
    for info in _stored_files(index):
        path = f"{remote or local}/{info['basename']}"
        if info["basename"] not in sizes:
            raise DataError(f"data.streams.{name}: shard {path} is missing; restore it or prepare this source again")
        if sizes[info["basename"]] != info["bytes"]:
            raise DataError(f"data.streams.{name}: shard {path} has {sizes[info['basename']]} bytes, its index says "
                            f"{info['bytes']} (truncated or replaced); restore it or prepare this source again")
    check_stream(name, str(local), tokenizer, fingerprint)
    _check_counts(name, Path(local), index)
    return index


def _check_counts(name: str, local: Path, index: dict) -> None:
    """The samples the index lists, against those stats.json recorded at prep (a hand-edited or swapped index
    would make the run read part of the data, or more), and at least one."""
    samples = sum(shard["samples"] for shard in index["shards"])
    stats = local / "stats.json"
    recorded = json.loads(stats.read_text()).get("samples") if stats.is_file() else None
    if recorded is not None and recorded != samples:
        raise DataError(f"data.streams.{name}: {local / 'index.json'} lists {samples:,} samples, but {stats} "
                        f"records {recorded:,} from its prep; restore the index or prepare this source again "
                        f"(`bertforge verify {local}` checks every shard)")
    if samples == 0:
        raise DataError(f"data.streams.{name}: {local} holds no samples (its sources gave no documents); prepare "
                        f"it from inputs that have text, or leave the stream out")


def _stored_files(index: dict) -> list[dict]:
    """The file each shard is stored as: its compressed form where it has one."""
    return [shard.get("zip_data") or shard["raw_data"] for shard in index["shards"]]


def _fetch_remote_index(name: str, remote: str, local: Path) -> dict[str, int]:
    """index.json and stats.json of a prepared stream in an object store, copied into ``local``; returns the
    store's listing ({name: bytes}), taken once."""
    folder = RemoteFolder(remote)
    folder.check(f"data.streams.{name}.remote")
    sizes = folder.sizes()
    if "index.json" not in sizes:
        raise DataError(f"data.streams.{name}: {remote}/index.json is missing: {remote} holds no prepared dataset; "
                        f"run `bertforge prep` with out_dir in the store, or fix the URL")
    local.mkdir(parents=True, exist_ok=True)
    for file in ("index.json", "stats.json"):
        if file in sizes:
            folder.download(file, local / file)
        else:
            (local / file).unlink(missing_ok=True)
    return sizes


@dataclass
class SourceReport:
    folder: Path
    shards: int = 0
    samples: int = 0
    problems: list[str] = field(default_factory=list)


def verify_source(folder: Path) -> SourceReport:
    """Re-hash every shard file that is present (compressed and, where streaming has unpacked it, raw) and compare
    sample counts with stats.json."""
    report = SourceReport(folder)
    try:
        index = read_index(folder)
    except DataError as err:
        report.problems.append(str(err))
        return report
    report.shards = len(index["shards"])
    report.samples = sum(shard["samples"] for shard in index["shards"])
    for shard in index["shards"]:
        stored = shard.get("zip_data") or shard["raw_data"]
        for info in shard_files({"shards": [shard]}):
            path = folder / info["basename"]
            if not path.is_file():
                if info is stored:
                    report.problems.append(f"{path}: missing")
                continue  # a raw file streaming has not unpacked yet
            data = path.read_bytes()
            if len(data) != info["bytes"]:
                report.problems.append(f"{path}: {len(data)} bytes, the index says {info['bytes']}")
                continue
            hashes = info.get("hashes") or {}
            if not hashes:
                report.problems.append(f"{path}: no hash recorded (prepared before shards were hashed); "
                                       f"run `bertforge prep RECIPE --force` to hash it")
            for algorithm, expected in hashes.items():
                if _hash(algorithm, data) != expected:
                    report.problems.append(f"{path}: {algorithm} hash differs from the index (corrupted)")
    stats_path = folder / "stats.json"
    if stats_path.is_file():
        stats = json.loads(stats_path.read_text())
        if stats.get("samples") != report.samples:
            report.problems.append(f"{folder}: the index lists {report.samples} samples, stats.json says "
                                   f"{stats.get('samples')}")
        if "provenance" not in stats:
            report.problems.append(f"{stats_path}: no provenance (tokenizer, max_seq_len) recorded")
    return report


def verify_dataset(root: str | Path) -> list[SourceReport]:
    """Every prepared source at ``root``: the folder itself if it holds an index.json, else each child that does
    (and its held-out split, ``eval/``)."""
    root = Path(root)
    if (root / "index.json").is_file():
        return [verify_source(root)]
    folders = sorted(p.parent for pattern in ("*/index.json", "*/eval/index.json") for p in root.glob(pattern))
    if not folders:
        raise DataError(f"{root} holds no prepared dataset (no index.json in it or in its subfolders)")
    return [verify_source(folder) for folder in folders]


def format_reports(reports: list[SourceReport]) -> str:
    """What `bertforge verify` prints: a line per source, then its problems."""
    lines = []
    for report in reports:
        lines.append(f"{report.folder}: {report.shards} shards, {report.samples:,} samples, "
                     f"{'OK' if not report.problems else f'{len(report.problems)} problem(s)'}")
        lines += [f"  {problem}" for problem in report.problems]
    return "\n".join(lines)


def raise_on_problems(root: str | Path, reports: list[SourceReport]) -> None:
    bad = sum(len(r.problems) for r in reports)
    if bad:
        raise DataError(f"{root}: {bad} problem(s) found (listed above); prepare the affected sources again "
                        f"(`bertforge prep RECIPE --force`) or restore their shards")
