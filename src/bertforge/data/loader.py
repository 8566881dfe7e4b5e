"""The training loader: a StreamingDataset mixture -> best-fit packed, MLM-masked micro-batches, resumable exactly.

Reading and decompressing shards happens in DataLoader workers (``num_workers``); packing and masking happen in
the training process, because their state (the packer's buffer, the masking RNG, how many documents this rank has
consumed) must be saved in checkpoints. ``state_dict`` captures all of it, and ``load_state_dict`` makes the next
iteration continue with exactly the batches an uninterrupted run would have produced, resuming the
StreamingDataset at its position instead of replaying the stream.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from streaming import Stream, StreamingDataset
from streaming.base.dataset import _ShardState
from torch.utils.data import DataLoader

from bertforge.data.config import DataConfig, StreamConfig, stream_cache
from bertforge.data.integrity import check_prepared_stream, index_hash
from bertforge.data.mixture import temperature_proportions
from bertforge.data.masking import mask_tokens, random_token_pool
from bertforge.data.packing import BestFitPacker, PackedRows
from bertforge.data.provenance import tokenizer_fingerprint
from bertforge.data.shm_registration import registration_lock
from bertforge.data.tokenizer import load_tokenizer, special_ids
from bertforge.errors import ConfigError, DataError
from bertforge.labels import IGNORE_INDEX


@dataclass
class PackedBatch:
    input_ids: torch.Tensor
    """(tokens,) masked inputs, packed: only real tokens, no padding."""
    labels: torch.Tensor
    """(tokens,) original ids where a prediction is due, else -100."""
    cu_seqlens: torch.Tensor
    """(documents + 1,) int32 offsets."""
    max_seqlen: int
    num_tokens: int
    """Real tokens in the micro-batch."""
    num_slots: int
    """rows x max_seq_len: what a padded batch would have cost."""
    num_masked: int
    """Positions with a label (the MLM loss is averaged over these across the whole step)."""
    prediction_index: torch.Tensor
    """(predictions rounded up to a multiple of PREDICTION_BUCKET,) int64 positions that carry a label, in stream
    order, then -1s. The model gathers these rows itself, so a compiled step finds no data-dependent size (and
    sizes from one bucket to the next only)."""
    row_offsets: torch.Tensor
    """(rows + 1,) int32 offsets of the packed rows in the stream: where a compiled SDPA path attends."""
    row_len: int
    """The rows' length (max_seq_len)."""

    def model_inputs(self) -> dict:
        """The keyword arguments of the model's packed forward."""
        return {key: getattr(self, key) for key in MODEL_INPUTS}


MODEL_INPUTS = ("input_ids", "labels", "cu_seqlens", "prediction_index", "row_offsets", "row_len")
"""The fields of a PackedBatch that the model's packed forward takes; the others are counts for the trainer.
(Not ``max_seqlen``: ``row_len`` bounds it, and an integer that changes every batch would recompile a compiled
forward.)"""


PREDICTION_BUCKET = 128
"""Prediction indices are padded to a multiple of this: the head's and decoder's row count stays a multiple of a
GPU tile and is never 0 or 1, sizes a compiler would otherwise specialise on."""


def _collate_docs(samples: list[dict]) -> list[np.ndarray]:
    return [s["tokens"] for s in samples]


@functools.cache
def _checked_dataset_class():
    """StreamingDataset that fails loudly, naming the shard, when a shard cannot be made ready.

    In streaming 0.13 a shard whose preparation raises (a hash mismatch, a truncated zstd frame) stays marked
    "preparing" for ever, and whoever waits for it (the main thread, other workers) waits for ever; or, when the
    background thread fails first, the epoch just ends early without a word. Here the failure is recorded, the
    shard's state released, and every later request for a shard, and the end of the iteration, raise a DataError
    that names the file.
    """
    class ShardCheckedDataset(StreamingDataset):
        _failure: DataError | None = None

        def __iter__(self):
            yield from super().__iter__()
            if self._failure is not None:
                raise self._failure

        def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
            if self._failure is not None:
                raise self._failure
            try:
                return super().prepare_shard(shard_id, blocking)
            except Exception as err:  # noqa: BLE001 - any failure to make a shard ready is reported by name
                stream = self.streams[self.stream_per_shard[shard_id]]
                raw, zipped = self.shards[shard_id].file_pairs[0]
                path = os.path.join(stream.remote or stream.local, (zipped or raw).basename)
                self._failure = DataError(
                    f"shard {path} cannot be read ({type(err).__name__}: {err}); `bertforge verify "
                    f"{stream.remote or stream.local}` lists every damaged shard; restore them or prepare the "
                    f"source again")
                self._shard_states[shard_id] = _ShardState.REMOTE  # release whoever waits on it
                raise self._failure from None

        def on_exception(self, future) -> None:
            """streaming re-raises a download thread's exception in the future's done-callback, where
            concurrent.futures can only log it (an "exception calling callback" traceback before our one line).
            Here the failure is kept, the other threads told to stop, and the error raised where a shard or the
            next batch is asked for (above)."""
            error = future.exception()
            if error is not None:
                self._event.set()
                if self._failure is None:
                    self._failure = error if isinstance(error, DataError) else DataError(
                        f"reading the dataset failed in streaming's download thread ({type(error).__name__}: "
                        f"{error})")

    return ShardCheckedDataset


def _writable(folder: str) -> bool:
    """Whether files can be created in ``folder`` (tried, since root passes permission checks a read-only mount
    refuses)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _checked_location(name: str, stream: StreamConfig, config: DataConfig, fingerprint: str) -> dict:
    """Where streaming reads one configured stream (``local``, ``remote``, ``validate_hash``), after the stream is
    checked (``check_prepared_stream``, with the fingerprint of ``config.tokenizer``); a remote stream's index.json
    and stats.json are then in ``stream.local``.

    A prepared dataset is read in place, its shards unpacked next to them, unless ``data.cache_dir`` is set or its
    folder is read-only: then the dataset is the stream's "remote" and the shards are copied and unpacked into the
    cache, leaving it untouched. A stream in an object store (``remote: s3://...``) is downloaded shard by shard
    into ``local``. Shards hashed at prep are checked against their hash as they are unpacked.
    """
    local, remote = stream.local, stream.remote
    validate = index_hash(check_prepared_stream(name, local, config.tokenizer, fingerprint, remote=remote))
    if remote is None and (config.cache_dir or not _writable(local)):
        remote, local = local, stream_cache(local, config.cache_dir)
    return {"local": local, "remote": remote, "validate_hash": validate}


def _stream(location: dict, stream: StreamConfig, config: DataConfig, proportion: float | None = None):
    """A streaming ``Stream`` at a checked location; ``proportion`` overrides the stream's own (a temperature
    mixture's)."""
    return Stream(**location, proportion=stream.proportion if proportion is None else proportion,
                  repeat=stream.repeat, download_retry=config.download_retry,
                  download_timeout=config.download_timeout)


def open_stream_dataset(name: str, config: DataConfig):
    """One prepared stream as a StreamingDataset in its own order, for reading by index (an eval set), with the
    same checks and read-only handling as training streams."""
    stream = config.streams[name]
    stream = _stream(_checked_location(name, stream, config, tokenizer_fingerprint(config.tokenizer)), stream, config)
    with registration_lock():
        return _checked_dataset_class()(streams=[stream], shuffle=False, batch_size=1, replication=None)


def masking_tokens(tokenizer_name: str, vocab_size: int | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """The [MASK] id, the ids never masked (every special and added special token), and the ids a random
    replacement may take (the vocabulary, up to the model's ``vocab_size``, less the specials)."""
    tokenizer = load_tokenizer(tokenizer_name)
    ids = special_ids(tokenizer)
    excluded = set(tokenizer.all_special_ids) | ids.as_set() | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    pool = random_token_pool(min(vocab_size or len(tokenizer), len(tokenizer)), excluded)
    return ids.mask, np.array(sorted(excluded), dtype=np.int64), pool


def packed_batch(lengths: np.ndarray, inputs: np.ndarray, labels: np.ndarray, docs_per_row: list[int] | np.ndarray,
                 max_seq_len: int) -> PackedBatch:
    """A micro-batch of documents of ``lengths`` laid end to end in ``inputs``/``labels``, ``docs_per_row`` of
    them in each packed row."""
    lengths = lengths.astype(np.int32)
    cu = np.zeros(lengths.shape[0] + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    row_ends = np.cumsum(np.asarray(docs_per_row, dtype=np.int64))
    kept = np.flatnonzero(labels != IGNORE_INDEX)
    index = np.full(-(-max(kept.shape[0], 1) // PREDICTION_BUCKET) * PREDICTION_BUCKET, -1, dtype=np.int64)
    index[:kept.shape[0]] = kept
    return PackedBatch(input_ids=torch.from_numpy(inputs), labels=torch.from_numpy(labels),
                       cu_seqlens=torch.from_numpy(cu), max_seqlen=int(lengths.max(initial=0)),
                       num_tokens=int(lengths.sum()), num_slots=len(row_ends) * max_seq_len,
                       num_masked=int(kept.shape[0]), prediction_index=torch.from_numpy(index),
                       row_offsets=torch.from_numpy(np.concatenate([[0], cu[row_ends]]).astype(np.int32)),
                       row_len=max_seq_len)


def _dist_info() -> tuple[int, int]:
    """Rank and world size as torch.distributed, or else the launcher's environment, has them."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class PackedMLMLoader:
    def __init__(self, config: DataConfig, *, micro_batch_rows: int | None = None, vocab_size: int | None = None):
        """``micro_batch_rows``: rows per micro-batch on this rank, when the trainer derives it (a
        ``micro_batch_size`` of 0 means the rank's whole share of a step); else ``config.micro_batch_size``."""
        self.micro_batch_rows = micro_batch_rows or config.micro_batch_size
        if self.micro_batch_rows <= 0:
            raise ConfigError("the loader needs micro_batch_size > 0 (rows per micro-batch on one rank)")
        self.config = config
        self.mask_id, self.special, self.pool = masking_tokens(config.tokenizer, vocab_size)
        self.rank, self.world_size = _dist_info()
        # Ranks that read separate shares of the stream; with pack_across_ranks all read all of it.
        self.readers = 1 if config.pack_across_ranks else self.world_size
        fingerprint = tokenizer_fingerprint(config.tokenizer)
        locations = {name: _checked_location(name, stream, config, fingerprint)
                     for name, stream in config.streams.items()}
        proportions = temperature_proportions(config)  # {} unless by temperature; reads the checked stats.json
        streams = [_stream(locations[name], stream, config, proportions.get(name))
                   for name, stream in config.streams.items()]
        nodes = max(1, self.world_size // int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)))
        if config.pack_across_ranks:
            nodes = 1
        dataset_class = _checked_dataset_class()
        with registration_lock():
            self.dataset = dataset_class(streams=streams, shuffle=config.shuffle, shuffle_seed=config.seed,
                                         batch_size=config.doc_batch,
                                         num_canonical_nodes=config.num_canonical_nodes or 64 * nodes,
                                         replication=self.world_size if config.pack_across_ranks else None,
                                         cache_limit=config.cache_limit)
        self.packer = BestFitPacker(config.max_seq_len, config.buffer_docs)
        self.rng = np.random.default_rng([config.seed] if config.pack_across_ranks else [config.seed, self.rank])
        self.epoch = 0
        self.sample_in_epoch = 0  # global (all ranks) samples consumed in this epoch, StreamingDataset's unit
        self._skip_docs = 0
        self._resume: dict | None = None  # StreamingDataset position to apply at the next iteration

    # -- iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PackedBatch]:
        """One pass over the current epoch; the packer's leftovers carry over to the next epoch."""
        if self._resume is not None:
            self.dataset.load_state_dict(self._resume)
            self._resume = None
        reader = DataLoader(self.dataset, batch_size=self.config.doc_batch, num_workers=self.config.num_workers,
                            collate_fn=_collate_docs)
        yield from self._drain()  # a restored buffer may already be full: pack it before reading more
        for docs in reader:
            self.sample_in_epoch += len(docs) * self.readers
            if self._skip_docs:
                skip, self._skip_docs = min(self._skip_docs, len(docs)), max(self._skip_docs - len(docs), 0)
                docs = docs[skip:]
            for doc in docs:
                self.packer.add(doc.astype(np.int64))
            yield from self._drain()
        self.epoch += 1
        self.sample_in_epoch = 0

    def _drain(self) -> Iterator[PackedBatch]:
        rows = self.micro_batch_rows * (self.world_size // self.readers)
        while self.packer.full:
            yield self._make_batch(self.packer.pack(rows))

    def _make_batch(self, packed: PackedRows) -> PackedBatch:
        lengths = np.fromiter((d.shape[0] for d in packed.documents), dtype=np.int64, count=len(packed.documents))
        inputs, labels = mask_tokens(np.concatenate(packed.documents), self.rng, self.config.mask_rate,
                                     self.mask_id, self.special, self.pool)
        docs_per_row, docs = packed.docs_per_row, slice(None)
        if self.readers == 1 and self.world_size > 1:  # the global batch: keep this rank's rows
            bounds = np.concatenate([[0], np.cumsum(packed.docs_per_row)])
            first = min(self.rank * self.micro_batch_rows, packed.rows)
            last = min(first + self.micro_batch_rows, packed.rows)
            docs_per_row = packed.docs_per_row[first:last]
            docs = slice(int(bounds[first]), int(bounds[last]))
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            tokens = slice(int(offsets[docs.start]), int(offsets[docs.stop]))
            inputs, labels = inputs[tokens], labels[tokens]
        return packed_batch(lengths[docs], inputs, labels, docs_per_row, packed.max_seq_len)

    # -- resumption -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "sample_in_epoch": self.sample_in_epoch, "rank": self.rank,
                "world_size": self.world_size, "packer": self.packer.state_dict(),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict | list[dict]) -> None:
        """Resume from this rank's state, or from the list of every rank's states that checkpoints hold."""
        if isinstance(state, list):
            state = state[0] if self.config.pack_across_ranks or len(state) != self.world_size else state[self.rank]
        if not self.config.pack_across_ranks and state["world_size"] != self.world_size:
            raise ValueError(f"loader state was saved with {state['world_size']} ranks, resuming with "
                             f"{self.world_size}; exact resumption needs the same number of ranks, or "
                             f"data.pack_across_ranks=true")
        self.epoch = state["epoch"]
        # Ranks consume documents at slightly different rates (packing is per rank), but StreamingDataset resumes
        # all ranks at one global position: resume at the slowest rank's position, and let faster ranks skip.
        mine = torch.tensor(state["sample_in_epoch"])
        slowest = mine.clone()
        if self.world_size > 1:
            torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MIN)
        self.sample_in_epoch = int(slowest)
        self._skip_docs = int(mine - slowest) // self.readers
        self._resume = {"epoch": self.epoch, "sample_in_epoch": self.sample_in_epoch, "shuffle_seed": self.config.seed,
                        "num_canonical_nodes": self.dataset.num_canonical_nodes, "initial_physical_nodes": None}
        self.packer.load_state_dict(state["packer"])
        self.rng.bit_generator.state = state["rng"]
