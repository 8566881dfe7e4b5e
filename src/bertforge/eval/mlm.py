"""Masked-LM evaluation on held-out data: the same masked batches every time, exact over any number of ranks.

An eval set is read once, in the dataset's order, up to ``max_tokens``; packed into rows by the same best-fit
packer as training; and masked with its own seeded generator. So every evaluation, on any number of ranks,
after any restart and at any point of training, scores exactly the same predictions. Ranks take the batches
round-robin and add up (in float64) the loss summed over predicted tokens, the number of predictions and the
number right; the sums are all-reduced, so the mean is the same as on one rank. Every rank runs the same number
of forward passes (a rank short of a batch runs one whose result it drops), as FSDP needs.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from bertforge.data.config import DataConfig, StreamConfig, stream_location
from bertforge.data.loader import PackedBatch, masking_tokens, open_stream_dataset, packed_batch
from bertforge.data.masking import mask_tokens
from bertforge.data.packing import BestFitPacker
from bertforge.errors import DataError
from bertforge.eval.config import EvalConfig
from bertforge.labels import IGNORE_INDEX


@dataclass
class EvalSet:
    name: str
    batches: list[PackedBatch]
    documents: int
    tokens: int


def load_eval_set(name: str, path: str, tokenizer: str, config: EvalConfig, seq_len: int,
                  vocab_size: int | None = None, cache_dir: str | None = None) -> EvalSet:
    """The fixed masked batches of one held-out dataset (a folder, or an s3:// URL read through a local cache)."""
    local, remote = stream_location(path, cache_dir)
    data = DataConfig(tokenizer=tokenizer, streams={name: StreamConfig(local=local, remote=remote)},
                      cache_dir=cache_dir)
    dataset = open_stream_dataset(name, data)
    docs, total = [], 0
    for index in range(dataset.num_samples):
        if total >= config.max_tokens:
            break
        doc = np.asarray(dataset[index]["tokens"], dtype=np.int64)
        docs.append(doc)
        total += doc.shape[0]
    del dataset
    if not docs:
        raise DataError(f"eval stream '{name}': {path} holds no documents; prepare it with a holdout "
                        f"(`holdout: {{fraction: 0.005}}` in the recipe) or point eval.streams.{name} elsewhere")
    # All rows packed and masked at once, then cut into micro-batches: the predictions do not depend on ``rows``.
    packer = BestFitPacker(seq_len, buffer_docs=len(docs))
    for doc in docs:
        packer.add(doc)
    packed = packer.pack(len(packer))
    lengths = np.fromiter((d.shape[0] for d in packed.documents), dtype=np.int64, count=len(packed.documents))
    mask_id, special, pool = masking_tokens(tokenizer, vocab_size)
    inputs, labels = mask_tokens(np.concatenate(packed.documents), np.random.default_rng([config.seed]),
                                 config.mask_rate, mask_id, special, pool)
    doc_bounds = np.concatenate([[0], np.cumsum(packed.docs_per_row)])
    token_bounds = np.concatenate([[0], np.cumsum(lengths)])
    batches = []
    for first in range(0, packed.rows, config.rows):
        last = min(first + config.rows, packed.rows)
        docs_slice = slice(int(doc_bounds[first]), int(doc_bounds[last]))
        tokens = slice(int(token_bounds[docs_slice.start]), int(token_bounds[docs_slice.stop]))
        batches.append(packed_batch(lengths[docs_slice], inputs[tokens].copy(), labels[tokens].copy(),
                                    packed.docs_per_row[first:last], seq_len))
    return EvalSet(name, batches, len(docs), total)


def _summary(sums: torch.Tensor) -> dict:
    loss_sum, count, correct = (float(v) for v in sums)
    loss = loss_sum / max(count, 1.0)
    return {"loss": loss, "accuracy": correct / max(count, 1.0), "perplexity": math.exp(min(loss, 700.0)),
            "predictions": int(count)}


@torch.no_grad()
def mlm_metrics(model, sets: list[EvalSet], device: torch.device | str = "cpu", autocast=None) -> dict:
    """{"loss", "accuracy", "perplexity", "predictions"} over all sets, and per set under "streams".

    ``model`` is a ModernBertForMaskedLM (sharded or not); ``autocast`` a context manager factory for the
    forward passes (the trainer's precision), or None.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    world = torch.distributed.get_world_size() if distributed else 1
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64)
    streams = {}
    try:
        for eval_set in sets:
            sums = torch.zeros(3, dtype=torch.float64)
            for step in range(math.ceil(len(eval_set.batches) / world)):
                index = rank + step * world
                batch = eval_set.batches[min(index, len(eval_set.batches) - 1)]
                with autocast() if autocast else contextlib.nullcontext():
                    out = model(batch.input_ids.to(device), labels=batch.labels.to(device),
                                cu_seqlens=batch.cu_seqlens.to(device), max_seqlen=batch.max_seqlen)
                if index >= len(eval_set.batches):
                    continue  # a pass run only so that every rank runs as many as the others
                targets = batch.labels[batch.labels != IGNORE_INDEX].to(device)
                count = int(out.num_predictions)
                sums += torch.tensor([float(out.loss) * count, count,
                                      int((out.predicted_ids() == targets).sum())], dtype=torch.float64)
            if distributed:
                reduced = sums.to(device) if torch.distributed.get_backend() == "nccl" else sums
                torch.distributed.all_reduce(reduced)
                sums = reduced.cpu()
            streams[eval_set.name] = _summary(sums)
            total += sums
    finally:
        model.train(was_training)
    return {**_summary(total), "streams": streams}
