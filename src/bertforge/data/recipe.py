"""The data-preparation recipe: which sources to read, how, with which tokenizer, and where shards go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from bertforge.errors import ConfigError
from bertforge.schema import load_config

InputFormat = Literal["jsonl", "parquet", "files", "docstrings", "pydoc_topics", "hf"]


@dataclass
class InputConfig:
    format: InputFormat
    """jsonl (also .gz/.zst), parquet, files (one document per file), docstrings (of Python files, parsed
    without importing), pydoc_topics (Python's reference docs), hf (a HuggingFace dataset, streamed)."""
    path: str = ""
    """File or directory (jsonl, parquet, files, docstrings); dataset name for hf; unused for pydoc_topics."""
    include: list[str] = field(default_factory=lambda: ["**/*"])
    """Glob patterns, relative to a directory path, of files to read."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of files to skip (tests, vendored code...)."""
    text_field: str = "text"
    """JSON key or Parquet column holding the text."""
    split: str = "train"
    """Split of an hf dataset."""
    max_files: int = 0
    """Read only the first N files (in sorted order); 0 means all. Keeps tests and samples small."""


@dataclass
class HoldoutConfig:
    fraction: float = 0.0
    """Share of documents held out for evaluation into ``out_dir/NAME/eval/`` (an MDS dataset of its own, with its
    own stats.json). A document is held out when a hash of its text falls below this share, so the choice does not
    depend on workers, units or order, and a document repeated in the input is in one split only. 0: none."""
    max_tokens: int = 0
    """Cap on the held-out split's tokens per source: whole units are kept in unit order until it is reached;
    documents held out by the units beyond it are in neither split. 0: no cap."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction < 0.5:
            raise ConfigError(f"'fraction' must be in [0, 0.5), got {self.fraction}")
        if self.max_tokens < 0:
            raise ConfigError(f"'max_tokens' must be >= 0 (0: no cap), got {self.max_tokens}")


@dataclass
class SourceConfig:
    name: str
    """Directory name of this source's MDS dataset under out_dir."""
    kind: str = "web"
    """Label for mixtures and stats: web, code, science, or anything."""
    inputs: list[InputConfig] = field(default_factory=list)
    """Where this source's documents come from."""
    holdout: HoldoutConfig | None = None
    """This source's held-out split, instead of the recipe's ``holdout``."""

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError(f"source '{self.name}' has no inputs; add at least one under 'inputs:'")


@dataclass
class PrepRecipe:
    tokenizer: str
    """HuggingFace tokenizer name or directory."""
    out_dir: str
    """Where each source's MDS dataset and stats.json are written: a folder, or an object store
    (``s3://bucket/prefix``), into which each unit is uploaded as it completes."""
    sources: list[SourceConfig]
    """The sources to prepare."""
    staging_dir: str | None = None
    """With ``out_dir`` in an object store: the local folder units are written to before their upload (each unit's
    shards are deleted from it once uploaded). Default: a folder per ``out_dir`` under the system's temporary
    folder."""
    max_seq_len: int = 8192
    """Longest sequence any training phase uses; longer documents are cut into chunks of this many tokens."""
    workers: int = 2
    """Parallel tokenizing processes."""
    files_per_unit: int = 200
    """Files per unit of work: the grain of parallelism and of resumption."""
    shard_size_limit: int = 1 << 25
    """Bytes per MDS shard before compression."""
    holdout: HoldoutConfig = field(default_factory=HoldoutConfig)
    """The held-out evaluation split of every source (a source's own ``holdout`` replaces it)."""
    on_bad_file: Literal["skip", "fail"] = "skip"
    """An input file that cannot be read to its end (a truncated or corrupt .gz/.zst/.parquet): 'skip' keeps the
    documents read before the fault, counts the file under 'unreadable file' and lists it in stats.json's
    bad_files; 'fail' stops the prep naming the file."""

    def __post_init__(self) -> None:
        if self.max_seq_len < 8:
            raise ConfigError(f"'max_seq_len' must be at least 8, got {self.max_seq_len}")
        if not self.sources:
            raise ConfigError("'sources' is empty; name at least one source with its inputs")
        for key in ("workers", "files_per_unit", "shard_size_limit"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        for source in self.sources:
            if source.holdout is None:
                source.holdout = self.holdout
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"source names must be unique, got {names}")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> PrepRecipe:
    recipe = load_config(PrepRecipe, path, overrides)
    check_inputs_exist(recipe, source=str(path))
    return recipe


def check_inputs_exist(recipe: PrepRecipe, *, source: str) -> None:
    """Fail before any work starts when an input path is missing."""
    for i, src in enumerate(recipe.sources):
        for j, inp in enumerate(src.inputs):
            if inp.format in ("pydoc_topics", "hf"):
                continue
            if not inp.path or not Path(inp.path).exists():
                raise ConfigError(f"{source}: sources[{i}].inputs[{j}].path '{inp.path}' (source '{src.name}') "
                                  f"does not exist; fix the path or remove the input")
