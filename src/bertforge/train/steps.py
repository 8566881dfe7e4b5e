"""Training steps from the packed loader: each step gathers as many micro-batches as the (warming-up) global batch
needs, and tells Composer how to weigh them so that the loss is the mean over the step's masked tokens."""

from __future__ import annotations

from collections.abc import Iterator

from bertforge.train.config import BatchWarmupConfig


def global_batch_at(tokens: int, start: int, target: int, warmup_tokens: int, multiple_of: int = 1) -> int:
    """Batch-size warmup: the global batch (rows) after ``tokens``, growing linearly from ``start`` to ``target``.

    ModernBERT grew its batch from 768 to 4608 sequences over the first 50B tokens. Each value is rounded down to
    a multiple of what one optimizer step can be split into (ranks x micro-batch rows), never below the start.
    """
    if warmup_tokens <= 0 or tokens >= warmup_tokens or start >= target:
        return target
    size = start + (target - start) * tokens / warmup_tokens
    return max(start, int(size) // multiple_of * multiple_of)


def step_rows(slots: int, warmup: BatchWarmupConfig, target: int, per_micro: int) -> int:
    """Global rows of the step that starts after ``slots`` row slots (rows x max_seq_len) of the run."""
    return global_batch_at(slots, warmup.start or target, target, warmup.tokens, per_micro)


class StepBatches:
    """Micro-batches of the loader grouped into steps, as Composer wants them (dicts of tensors and numbers).

    Its one piece of state, the slots stepped through so far, rides in checkpoints with the loader's, so a
    resumed run continues the batch-size warmup where it was.
    """

    def __init__(self, loader, global_batch_size: int, warmup: BatchWarmupConfig, world_size: int):
        self.loader = loader
        self.target = global_batch_size
        self.warmup = warmup
        self.per_micro = loader.micro_batch_rows * world_size  # global rows in one micro-batch step
        self.max_seq_len = loader.config.max_seq_len
        self.slots = 0

    def __iter__(self) -> Iterator[dict]:
        micro_batches = []
        for batch in self.loader:
            micro_batches.append({**batch.model_inputs(), "num_tokens": batch.num_tokens,
                                  "num_slots": batch.num_slots, "num_masked": batch.num_masked})
            rows = step_rows(self.slots, self.warmup, self.target, self.per_micro)
            if len(micro_batches) * self.per_micro < rows:
                continue
            self.slots += rows * self.max_seq_len
            yield {"micro_batches": micro_batches,
                   **{key: sum(m[key] for m in micro_batches) for key in ("num_tokens", "num_slots", "num_masked")},
                   "num_docs": sum(m["cu_seqlens"].numel() - 1 for m in micro_batches)}
            micro_batches = []

    def state_dict(self) -> dict:
        return {"slots": self.slots}

    def load_state_dict(self, state: dict) -> None:
        self.slots = state["slots"]


def dataspec(steps: StepBatches):
    """Composer's DataSpec: durations in 'tok' count real tokens; micro-batches are weighed by their masked tokens
    (accumulate_train_batch_on_tokens), which across micro-batches and ranks makes the loss the global mean."""
    from composer import DataSpec  # noqa: PLC0415 (torch-free: plan imports step_rows)

    from bertforge.model.modernbert import mark_dynamic_sizes  # noqa: PLC0415 (as above)

    return DataSpec(steps, get_num_samples_in_batch=lambda b: b["num_slots"] // steps.max_seq_len,
                    get_num_tokens_in_batch=lambda b: {"total": b["num_tokens"], "loss_generating": b["num_masked"]},
                    split_batch=lambda b, _: b["micro_batches"],
                    # on the device's copy of each micro-batch, just before the (compiled) forward
                    microbatch_transforms=mark_dynamic_sizes)
