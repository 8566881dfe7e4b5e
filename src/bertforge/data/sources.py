"""Readers for every input format, cut into units of work that can be tokenized in parallel and resumed.

A reader yields ``(text, None)`` for a document and ``(None, reason)`` for one it had to skip, so bad records are
counted and reported rather than crashing a long preparation.
"""

from __future__ import annotations

import ast
import fnmatch
import gzip
import hashlib
import io
import json
import multiprocessing
import os
import time
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import zstandard
from tqdm import tqdm

from bertforge.data.recipe import InputConfig, PrepRecipe, SourceConfig
from bertforge.errors import ConfigError, DataError

Record = tuple[str | None, str | None]


@dataclass(frozen=True)
class Unit:
    """A slice of one input that one worker prepares in one go; ``key`` names its output part."""

    source: str
    key: str
    input: InputConfig
    files: tuple[str, ...]

    def fingerprint(self) -> str:
        """Changes when the unit's inputs change, so a resumed prep never mixes old and new data."""
        digest = hashlib.sha256(json.dumps([self.input.format, self.input.path, self.input.text_field]).encode())
        for name in self.files:
            stat = Path(name).stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _list_files(inp: InputConfig, skip: Path | None = None) -> list[str]:
    """The files of ``inp`` its ``include`` patterns match and its ``exclude`` patterns do not (a file inside an
    excluded folder is excluded too), sorted. Symlinked folders are followed, each real folder read once (a link
    back up the tree is not followed again); ``skip`` is a folder never read: prep's own output, when a recipe
    writes it inside one of its inputs (a rerun would otherwise read its own shards, or be refused)."""
    root = Path(inp.path)
    if root.is_file():
        return [str(root)]
    files = sorted(str(root.joinpath(*rel)) for rel in _walk(root, inp.exclude, skip)
                   if any(_matches(rel, pattern) for pattern in inp.include))
    return files[: inp.max_files] if inp.max_files else files


def _walk(root: Path, exclude: list[str], skip: Path | None) -> Iterator[tuple[str, ...]]:
    """Every file under ``root`` as its path parts below it that no ``exclude`` pattern matches, nor any folder
    above it (an excluded folder is not entered), through symlinked folders, each real folder once."""
    seen = {root.resolve()}
    skipped = skip.resolve() if skip is not None else None
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while stack:
        folder, parts = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            rel = (*parts, entry.name)
            if any(_matches(rel, pattern) for pattern in exclude):
                continue
            if entry.is_dir():  # follows a symlink
                real = Path(entry.path).resolve()
                if real not in seen and real != skipped:
                    seen.add(real)
                    stack.append((Path(entry.path), rel))
            elif entry.is_file():
                yield rel


def _matches(rel: tuple[str, ...], pattern: str) -> bool:
    """Whether path parts ``rel`` match a glob ``pattern`` as ``Path.glob`` would: ``*``, ``?`` and ``[...]`` within
    one part (hidden names included), ``**`` for any number of folders."""
    return _match_parts(rel, tuple(part for part in pattern.split("/") if part not in ("", ".")))


def _match_parts(rel: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if not pattern:
        return not rel
    if pattern[0] == "**":
        return any(_match_parts(rel[start:], pattern[1:]) for start in range(len(rel) + 1))
    return bool(rel) and fnmatch.fnmatchcase(rel[0], pattern[0]) and _match_parts(rel[1:], pattern[1:])


def plan_units(source: SourceConfig, files_per_unit: int, skip: Path | None = None) -> list[Unit]:
    """``source``'s inputs cut into units; ``skip``: a folder whose files are never read (prep's own output)."""
    units = []
    for i, inp in enumerate(source.inputs):
        if inp.format in ("pydoc_topics", "hf"):
            units.append(Unit(source.name, f"i{i:02d}-u00000", inp, ()))
            continue
        files = _list_files(inp, skip)
        per_unit = files_per_unit if inp.format in ("files", "docstrings") else 1
        for u, start in enumerate(range(0, len(files), per_unit)):
            units.append(Unit(source.name, f"i{i:02d}-u{u:05d}", inp, tuple(files[start:start + per_unit])))
    return units


def _first_record_fields(name: str, fmt: str) -> list[str] | None:
    """The fields of a JSONL or Parquet file's first record; None when it has no readable record."""
    if fmt == "parquet":
        import pyarrow.parquet as pq  # noqa: PLC0415 (only for that input format)

        return list(pq.ParquetFile(name).schema_arrow.names)
    for line in _open_text_lines(name):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError:
                return None
            return sorted(record) if isinstance(record, dict) else None
    return None


def check_text_fields(units: list[Unit]) -> None:
    """Before any work: the first file of each JSONL or Parquet input has its ``text_field``. A wrong field name
    would otherwise skip every record and leave an empty dataset that fails far from the cause."""
    checked = set()
    for unit in units:
        inp = unit.input
        if inp.format not in ("jsonl", "parquet") or not unit.files or id(inp) in checked:
            continue
        checked.add(id(inp))
        fields = _first_record_fields(unit.files[0], inp.format)
        if fields is not None and inp.text_field not in fields:
            raise ConfigError(f"source '{unit.source}': the first record of {unit.files[0]} has no field "
                              f"'{inp.text_field}' (it has: {', '.join(fields)}); set the input's text_field to "
                              f"the one that holds the text")


def read_unit(unit: Unit, bad_files: list[str] | None = None) -> Iterator[Record]:
    """Every record of a unit. A file that cannot be read to its end (truncated, corrupt) keeps what was read
    before the fault, counts once as 'unreadable file', and is appended to ``bad_files`` as "path: error"."""
    fmt = unit.input.format
    if fmt == "pydoc_topics":
        from pydoc_data.topics import topics  # noqa: PLC0415 (only for that input format)

        yield from (_checked(topics[name]) for name in sorted(topics))
    elif fmt == "hf":
        yield from _read_hf(unit.input)
    else:
        reader = {"files": _read_file, "docstrings": _read_docstrings, "jsonl": _read_jsonl,
                  "parquet": _read_parquet}[fmt]
        for name in unit.files:
            try:
                yield from reader(name, unit.input.text_field)
            except (EOFError, OSError, ValueError, zlib.error, zstandard.ZstdError) as err:
                if bad_files is not None:
                    bad_files.append(f"{name}: {type(err).__name__}: {err}")
                yield None, "unreadable file"


def recipe_texts(recipe: PrepRecipe, progress: bool = False) -> Iterator[str]:
    """Every document text of a recipe's sources, in order (what a tokenizer is trained on); with ``progress``, a
    bar over the units with documents and megabytes read, their rates, and an ETA. The recipe's ``workers``
    processes read the file-based units a few ahead (parsing Python for docstrings is slow, and a tokenizer
    trainer waits on it); the texts and their order are those of one process, so is the tokenizer."""
    units = [unit for src in recipe.sources for unit in plan_units(src, recipe.files_per_unit, Path(recipe.out_dir))]
    docs, size, start = 0, 0, time.time()
    with tqdm(total=len(units), unit="unit", desc="reading", disable=not progress) as bar:
        for texts in _unit_texts_in_order(units, recipe.workers):
            for text in texts:
                docs, size = docs + 1, size + len(text)
                yield text
            elapsed = max(time.time() - start, 1e-9)
            bar.set_postfix_str(f"{docs:,} docs, {size / 1e6:,.1f} MB, {docs / elapsed:,.0f} docs/s, "
                                f"{size / 1e6 / elapsed:,.1f} MB/s")
            bar.update()


READ_AHEAD_FORMATS = ("files", "docstrings", "jsonl", "parquet")
"""Formats whose units are bounded (``files_per_unit`` files, or one file), so a worker may hand one back whole;
a ``pydoc_topics`` or ``hf`` unit is read here, streamed."""


def _texts(unit: Unit) -> Iterator[str]:
    return (text for text, _ in read_unit(unit) if text)


def _unit_texts(unit: Unit) -> list[str]:
    return list(_texts(unit))


def _unit_texts_in_order(units: list[Unit], workers: int) -> Iterator[Iterable[str]]:
    """Each unit's texts, in unit order. With more than one worker, at most two units per worker are read ahead,
    so memory holds a few units' texts, not the corpus."""
    if workers <= 1:
        yield from map(_texts, units)
        return
    pending: deque = deque()
    remaining = iter(units)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        def read_ahead() -> None:
            while len(pending) < 2 * workers and (unit := next(remaining, None)) is not None:
                ahead = unit.input.format in READ_AHEAD_FORMATS
                pending.append((unit, pool.submit(_unit_texts, unit) if ahead else None))

        read_ahead()
        while pending:
            unit, future = pending.popleft()
            read_ahead()
            if future is None:
                yield _texts(unit)
                continue
            try:
                yield future.result()
            except BrokenProcessPool:
                raise DataError(f"a reader process died (killed by a signal, often the out-of-memory killer) "
                                f"while reading {unit.source}/{unit.key}; run again with fewer 'workers' if "
                                f"memory ran out") from None


def _checked(text: str) -> Record:
    return (text, None) if text.strip() else (None, "empty document")


def _read_file(name: str, _field: str) -> Iterator[Record]:
    try:
        text = Path(name).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        yield None, "undecodable bytes"
        return
    yield _checked(text)


def _read_docstrings(name: str, _field: str) -> Iterator[Record]:
    """A file's module, class and function docstrings as one document; parsed, never imported."""
    try:
        tree = ast.parse(Path(name).read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError):
        yield None, "unparseable python"
        return
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    docs = [doc for doc in (ast.get_docstring(n) for n in nodes) if doc]
    yield _checked("\n\n".join(docs))


def _open_text_lines(name: str) -> Iterator[bytes]:
    if name.endswith(".gz"):
        with gzip.open(name, "rb") as fh:
            yield from fh
    elif name.endswith(".zst"):
        with open(name, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as fh:
            yield from io.BufferedReader(fh)
    else:
        with open(name, "rb") as fh:
            yield from fh


def _read_jsonl(name: str, field: str) -> Iterator[Record]:
    for line in _open_text_lines(name):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            yield None, "undecodable bytes"
            continue
        except json.JSONDecodeError:
            yield None, "invalid json"
            continue
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            yield None, f"missing text field '{field}'"
            continue
        yield _checked(text)


def _read_parquet(name: str, field: str) -> Iterator[Record]:
    import pyarrow.parquet as pq  # noqa: PLC0415 (only for that input format)

    table = pq.ParquetFile(name)
    if field not in table.schema_arrow.names:
        for _ in range(table.metadata.num_rows):
            yield None, f"missing text field '{field}'"
        return
    for batch in table.iter_batches(columns=[field]):
        for text in batch.column(0).to_pylist():
            yield _checked(text) if isinstance(text, str) else (None, f"missing text field '{field}'")


def _read_hf(inp: InputConfig) -> Iterator[Record]:
    try:
        import datasets  # noqa: PLC0415 (only for that input format)
    except ImportError as err:
        raise RuntimeError("format 'hf' needs the datasets package: pip install datasets") from err
    for record in datasets.load_dataset(inp.path, split=inp.split, streaming=True):
        text = record.get(inp.text_field)
        yield _checked(text) if isinstance(text, str) else (None, f"missing text field '{inp.text_field}'")
