"""The training loader: a StreamingDataset mixture -> best-fit packed, MLM-masked micro-batches, resumable exactly.

Reading and decompressing shards happens in DataLoader workers (``num_workers``); packing and masking happen in
the training process, because their state (the packer's buffer, the masking RNG, how many documents this rank has
consumed) must be saved in checkpoints. ``state_dict`` captures all of it, and ``load_state_dict`` makes the next
iteration continue with exactly the batches an uninterrupted run would have produced, resuming the
StreamingDataset at its position instead of replaying the stream.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from bertforge.data.config import DataConfig
from bertforge.data.masking import mask_tokens, random_token_pool
from bertforge.data.packing import BestFitPacker, PackedRows
from bertforge.data.tokenizer import load_tokenizer, special_ids
from bertforge.labels import IGNORE_INDEX
from bertforge.schema import ConfigError


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


def _collate_docs(samples: list[dict]) -> list[np.ndarray]:
    return [s["tokens"] for s in samples]


def _dist_info() -> tuple[int, int]:
    """Rank and world size as torch.distributed, or else the launcher's environment, has them."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class PackedMLMLoader:
    def __init__(self, config: DataConfig, *, micro_batch_rows: int | None = None, vocab_size: int | None = None):
        """``micro_batch_rows``: rows per micro-batch on this rank, when the trainer derives it (a
        ``micro_batch_size`` of 0 means the rank's whole share of a step); else ``config.micro_batch_size``."""
        from streaming import Stream, StreamingDataset

        self.micro_batch_rows = micro_batch_rows or config.micro_batch_size
        if self.micro_batch_rows <= 0:
            raise ConfigError("the loader needs micro_batch_size > 0 (rows per micro-batch on one rank)")
        self.config = config
        tokenizer = load_tokenizer(config.tokenizer)
        ids = special_ids(tokenizer)
        self.mask_id = ids.mask
        excluded = set(tokenizer.all_special_ids) | ids.as_set() | {
            i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        self.special = np.array(sorted(excluded), dtype=np.int64)
        self.vocab_size = vocab_size or len(tokenizer)
        self.pool = random_token_pool(min(self.vocab_size, len(tokenizer)), excluded)
        self.rank, self.world_size = _dist_info()
        # Ranks that read separate shares of the stream; with pack_across_ranks all read all of it.
        self.readers = 1 if config.pack_across_ranks else self.world_size
        streams = [Stream(local=s.local, remote=s.remote, proportion=s.proportion, repeat=s.repeat)
                   for s in config.streams.values()]
        nodes = max(1, self.world_size // int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size)))
        if config.pack_across_ranks:
            nodes = 1
        self.dataset = StreamingDataset(streams=streams, shuffle=config.shuffle, shuffle_seed=config.seed,
                                        batch_size=config.doc_batch,
                                        num_canonical_nodes=config.num_canonical_nodes or 64 * nodes,
                                        replication=self.world_size if config.pack_across_ranks else None)
        self.packer = BestFitPacker(config.max_seq_len, config.buffer_docs)
        self.rng = np.random.default_rng([config.seed] if config.pack_across_ranks else [config.seed, self.rank])
        self.epoch = 0
        self.sample_in_epoch = 0  # global (all ranks) samples consumed in this epoch, StreamingDataset's unit
        self._skip_docs = 0
        self._resume: dict | None = None  # StreamingDataset position to apply at the next iteration

    # -- iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PackedBatch]:
        """One pass over the current epoch; the packer's leftovers carry over to the next epoch."""
        from torch.utils.data import DataLoader

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
        rows, docs = packed.rows, slice(None)
        if self.readers == 1 and self.world_size > 1:  # the global batch: keep this rank's rows
            rows = self.micro_batch_rows
            bounds = np.concatenate([[0], np.cumsum(packed.docs_per_row)])
            first = min(self.rank * rows, packed.rows)
            docs = slice(int(bounds[first]), int(bounds[min(first + rows, packed.rows)]))
            rows = min(first + rows, packed.rows) - first
            offsets = np.concatenate([[0], np.cumsum(lengths)])
            tokens = slice(int(offsets[docs.start]), int(offsets[docs.stop]))
            inputs, labels = inputs[tokens], labels[tokens]
        lengths = lengths[docs].astype(np.int32)
        cu = np.zeros(lengths.shape[0] + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu[1:])
        return PackedBatch(input_ids=torch.from_numpy(inputs), labels=torch.from_numpy(labels),
                           cu_seqlens=torch.from_numpy(cu), max_seqlen=int(lengths.max(initial=0)),
                           num_tokens=int(lengths.sum()), num_slots=rows * packed.max_seq_len,
                           num_masked=int((labels != IGNORE_INDEX).sum()))

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
