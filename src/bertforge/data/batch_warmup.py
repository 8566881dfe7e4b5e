"""Batch-size warmup: the global batch (in sequences) grows linearly in tokens from a start to a target.

ModernBERT grew its batch from 768 to 4608 sequences over the first 50B tokens. Each value is rounded down to a
multiple of what one optimizer step can be split into (ranks x micro-batch rows), never below the start.
"""

from __future__ import annotations


def global_batch_at(tokens: int, start: int, target: int, warmup_tokens: int, multiple_of: int = 1) -> int:
    if warmup_tokens <= 0 or tokens >= warmup_tokens or start >= target:
        return target
    size = start + (target - start) * tokens / warmup_tokens
    return max(start, int(size) // multiple_of * multiple_of)
