"""A task's local data file read as a ``datasets.Dataset``: the one reader of classification splits
(``data.files``) and retrieval training rows (``data.train_file``), so both accept the same formats and refuse a
missing, empty or unknown file with the same line."""

from __future__ import annotations

from pathlib import Path

from bertforge.errors import DataError

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
"""The file endings read, and the ``datasets`` builder that reads each."""


def read_table(path: Path, split: str, where: str):
    """``path`` as split ``split`` of a ``datasets.Dataset``; ``where`` names the key in messages
    (``task.yaml: data.files.train``)."""
    import datasets  # noqa: PLC0415 (torch-free callers load task files without it)

    if not path.is_file():
        raise DataError(f"{where} is {path}, which does not exist")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{where} is {path}; use .jsonl, .json, .csv, .tsv or .parquet")
    if path.stat().st_size == 0:
        raise DataError(f"{where} is {path}, which is empty; give it the split's rows")
    datasets.disable_progress_bars()
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    return datasets.load_dataset(kind, data_files={split: str(path)}, split=split, **options)
