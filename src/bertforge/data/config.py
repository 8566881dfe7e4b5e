"""The training data config: which prepared streams to mix, and how the loader packs and masks them.

Standard library only (plus the schema helper), so a run config loads without torch; the loader that reads it is
``bertforge.data.loader``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from bertforge.errors import ConfigError
from bertforge.paths import keyed_folder
from bertforge.store import is_remote


@dataclass
class StreamConfig:
    local: str
    """Directory of a prepared MDS dataset (the output of `bertforge prep` for one source), or, with ``remote``,
    the local cache its shards are downloaded into (one per stream; not shared with another dataset)."""
    remote: str | None = None
    """The prepared dataset in an object store (s3://bucket/prefix/SOURCE, as `bertforge prep` wrote it), streamed
    into ``local``; None reads ``local`` in place."""
    proportion: float | None = None
    """Share of the mixture's samples; give it for every stream or for none (or give ``data.temperature``)."""
    repeat: float | None = None
    """Up- or down-sample this stream by this factor instead of a proportion."""

    def __post_init__(self) -> None:
        for key in ("proportion", "repeat"):
            if getattr(self, key) is not None and not (math.isfinite(getattr(self, key)) and getattr(self, key) > 0):
                raise ConfigError(f"'{key}' must be above 0 (leave the stream out to drop it), got "
                                  f"{getattr(self, key)}")


@dataclass
class DataConfig:
    tokenizer: str
    """HuggingFace tokenizer name or directory; must be the one the shards were prepared with."""
    streams: dict[str, StreamConfig] = field(default_factory=dict)
    """Named sources of the mixture."""
    temperature: float | None = None
    """Mix the streams by sampling temperature instead of proportions: each stream's share of the tokens is
    proportional to n^(1/T), n its token count (from its stats.json). 1 mixes by size, lower values flatten the
    mixture towards equal shares (mmBERT anneals 0.7 -> 0.5 -> 0.3 over its phases). None: the streams'
    ``proportion`` (or, without it, their sizes)."""
    max_seq_len: int = 1024
    """Token slots per packed row."""
    micro_batch_size: int = 0
    """Rows per micro-batch on one rank; a training step accumulates global_batch_size / (ranks x this) of them.
    0: a rank's whole share of the step in one micro-batch (no gradient accumulation)."""
    mask_rate: float = 0.3
    """Fraction of non-special tokens chosen for MLM prediction."""
    shuffle: bool = True
    """Shuffle samples (StreamingDataset's shuffle, seeded)."""
    seed: int = 17
    """Seed of the shuffle and of masking."""
    buffer_docs: int = 2048
    """Documents the packer holds to choose from; more gives fuller rows."""
    doc_batch: int = 64
    """Documents read from the stream at a time (StreamingDataset batch_size)."""
    num_workers: int = 0
    """DataLoader workers reading shards."""
    cache_dir: str | None = None
    """Unpack every local stream's shards into a folder under this one instead of next to them (streaming keeps
    shards zstd-compressed on disk and unpacks each on first read), leaving the prepared dataset untouched. A
    stream whose folder is read-only is unpacked into a cache even when this is unset: under
    ``<system temp>/bertforge-cache``."""
    cache_limit: str | None = None
    """Most disk the local copies of remote streams may take ('50gb', '500mb'): streaming evicts the least recently
    used shards past it and downloads them again when needed. It must hold at least a few shards per rank and
    worker. None: no limit (the whole dataset ends up on local disk)."""
    download_retry: int = 2
    """Times a shard download from a remote stream is retried before the run fails naming the shard."""
    download_timeout: float = 60.0
    """Seconds one shard download may take before it counts as failed."""
    num_canonical_nodes: int = 0
    """StreamingDataset's shuffle grain; 0 means streaming's default (64 per node). Keep it fixed across a run's
    restarts, or the sample order changes."""
    pack_across_ranks: bool = False
    """Every rank reads the whole stream, packs and masks the whole global batch and keeps its own rows, so the
    batches (and the loss) are the same for any number of ranks and a run may resume on a different number. It
    costs each rank the reading of all the data (world_size times the I/O), which is fine within a node or two;
    beyond that keep it off and each rank reads and packs its own share."""

    def __post_init__(self) -> None:
        if not self.streams:
            raise ConfigError("'streams' is empty; name at least one prepared source")
        with_proportion = [name for name, s in self.streams.items() if s.proportion is not None]
        if with_proportion and len(with_proportion) != len(self.streams):
            missing = sorted(set(self.streams) - set(with_proportion))
            raise ConfigError(f"give 'proportion' for every stream or for none; missing for: {', '.join(missing)}")
        if self.temperature is not None:
            if not (math.isfinite(self.temperature) and self.temperature > 0):
                raise ConfigError(f"'temperature' must be above 0 (1 mixes by size), got {self.temperature}")
            weighted = sorted(name for name, s in self.streams.items() if s.proportion is not None or s.repeat)
            if weighted:
                raise ConfigError(f"give 'temperature' or the streams' 'proportion'/'repeat', not both; remove them "
                                  f"from: {', '.join(weighted)}")
        if not 0.0 < self.mask_rate < 1.0:
            raise ConfigError(f"'mask_rate' must be in (0, 1), got {self.mask_rate}")
        if self.micro_batch_size < 0:
            raise ConfigError(f"'micro_batch_size' must be >= 0, got {self.micro_batch_size}")
        if self.max_seq_len < 8:
            raise ConfigError(f"'max_seq_len' must be at least 8, got {self.max_seq_len}")
        for key in ("buffer_docs", "doc_batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        if self.download_retry < 0 or self.download_timeout <= 0:
            raise ConfigError(f"'download_retry' must be >= 0 and 'download_timeout' above 0, got "
                              f"{self.download_retry} and {self.download_timeout}")
        if self.num_workers < 0:
            raise ConfigError(f"'num_workers' must be >= 0 (0 reads in the training process), got {self.num_workers}")


def stream_cache(dataset: str, cache_dir: str | None) -> str:
    """Where a dataset's shards are unpacked when not next to them: one folder per dataset (a local folder or a
    URL) under ``cache_dir`` (default: bertforge-cache in the system's temporary folder)."""
    key = dataset if is_remote(dataset) else str(Path(dataset).resolve())
    return str(keyed_folder(key, cache_dir, "bertforge-cache"))


def stream_location(dataset: str, cache_dir: str | None) -> tuple[str, str | None]:
    """(local, remote) of a dataset named by one path (an eval set): a folder is read in place, a URL is
    downloaded into its cache."""
    return (stream_cache(dataset, cache_dir), dataset) if is_remote(dataset) else (dataset, None)
