"""A task's examples: rows read with ``datasets`` (a HuggingFace dataset by name, or local files), labels mapped
to ids, texts tokenized and framed ``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``.

Rows whose label is missing or -1 (the GLUE test splits) are left out, so they never reach a metric.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bertforge.data.tokenizer import load_tokenizer
from bertforge.errors import DataError
from bertforge.finetune.config import TaskConfig
from bertforge.finetune.files import read_table


@dataclass
class Examples:
    """One split, ready to batch."""

    ids: list[list[int]]
    """Framed token ids per example."""
    labels: list
    """Per example: a label id, a float (regression), or a multi-hot list of floats (multi-label)."""
    left_out: int = 0
    """Rows without a label (-1 or missing), not used."""


def read_rows(task: TaskConfig, split: str):
    """The split as a ``datasets.Dataset``; a missing file, dataset or split is one line naming it."""
    import datasets  # noqa: PLC0415 (only for a hub dataset)

    data = task.data
    datasets.disable_progress_bars()
    if data.hf_dataset:
        try:
            return datasets.load_dataset(data.hf_dataset, data.hf_config, split=split)
        except Exception as err:  # noqa: BLE001 (network, unknown config or split: datasets raises many kinds)
            raise DataError(f"{task.source}: could not load split '{split}' of the HuggingFace dataset "
                            f"{data.hf_dataset!r} (config {data.hf_config!r}): {str(err).splitlines()[0]}; check "
                            f"the name and your network, or download it and point data.files at local files") \
                from None
    return read_table(task.file(split), split, f"{task.source}: data.files.{split}")


def _label(task: TaskConfig, value, where: str):
    """A row's label as the loss wants it, or None where the row has none (-1, missing)."""
    labels, kind = task.head.labels, task.head.problem_type
    missing = task.data.missing_label
    if value is None or (missing is not None and not isinstance(value, list | str) and value == missing):
        return None
    if kind == "regression":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"{where}: label {value!r} is not a number, as a regression task needs")
        return float(value)
    if kind == "multi_label_classification":
        hot = [0.0] * len(labels)
        for item in value:
            hot[_label_id(labels, item, where)] = 1.0
        return hot
    return _label_id(labels, value, where)


def _label_id(labels: list[str], value, where: str) -> int:
    if isinstance(value, str):
        if value in labels:
            return labels.index(value)
        raise DataError(f"{where}: label {value!r} is not one of head.labels {labels}")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(labels):
        raise DataError(f"{where}: label {value!r} is not a label id in 0..{len(labels) - 1} (head.labels {labels})")
    return value


def load_examples(task: TaskConfig, split: str, tokenizer, cls_id: int, sep_id: int,
                  limit: int | None = None) -> Examples:
    """Split ``split`` of ``task``, tokenized with ``tokenizer`` (a ``tokenizers.Tokenizer``) and framed."""
    rows = read_rows(task, split)
    fields = [*task.data.text_fields, task.data.label_field]
    missing = [f for f in fields if f not in rows.column_names]
    where = f"{task.source}: split '{split}' ({task.data.hf_dataset or task.file(split)})"
    if missing:
        raise DataError(f"{where} has no field(s) {missing} (its fields: {', '.join(rows.column_names)}); set "
                        f"data.text_fields / data.label_field to the right names")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    labels = [_label(task, value, f"{where}, row {i}") for i, value in enumerate(rows[task.data.label_field])]
    keep = [i for i, label in enumerate(labels) if label is not None]
    texts = [[_text(rows[f][i], f, f"{where}, row {i}") for i in keep] for f in task.data.text_fields] if keep else []
    encoded = [[e.ids for e in tokenizer.encode_batch(column, add_special_tokens=False)] for column in texts]
    budget = task.train.max_length - 1 - len(encoded)
    framed = [frame([column[i] for column in encoded], budget, cls_id, sep_id) for i in range(len(keep))]
    return Examples(framed, [labels[i] for i in keep], left_out=len(labels) - len(keep))


def _text(value, field: str, where: str) -> str:
    """A row's text field; a row without one (missing or null) is an error, not an empty text to train on."""
    if value is None:
        raise DataError(f"{where}: no text in field '{field}' (missing or null); fix or drop the row")
    return str(value)


def frame(parts: list[list[int]], budget: int, cls_id: int, sep_id: int) -> list[int]:
    """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, with at most ``budget`` text tokens: the longer text of a pair
    is cut first, down to the shorter one's length, then both evenly (the usual "longest first")."""
    keep = [min(len(parts[0]), budget)]
    if len(parts) == 2:
        a, b = len(parts[0]), len(parts[1])
        if a + b > budget:
            short = min(a, b, budget // 2)
            a, b = (budget - short, short) if a >= b else (short, budget - short)
        keep = [a, b]
    ids = [cls_id]
    for part, n in zip(parts, keep, strict=True):
        ids += [*part[:n], sep_id]
    return ids


def task_tokenizer(model: str | Path, tokenizer: str | None):
    """The fast tokenizer (``tokenizers.Tokenizer``) of ``tokenizer`` (a directory or hub name), else the model
    directory's own."""
    source = tokenizer or str(model)
    if not tokenizer and not (Path(model) / "tokenizer.json").is_file():
        raise DataError(f"{model} holds no tokenizer; pass --tokenizer DIR (the tokenizer it was pretrained with)")
    return load_tokenizer(source).backend_tokenizer
