"""MLM masking done in the loader, seeded, with specials and padding never masked."""

from __future__ import annotations

import numpy as np

from bertforge.labels import IGNORE_INDEX


def random_token_pool(vocab_size: int, excluded: set[int]) -> np.ndarray:
    """Ids a random replacement may take: the whole vocabulary except special tokens (not just ids in the batch)."""
    pool = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), np.fromiter(excluded, dtype=np.int64))
    if pool.size == 0:
        raise ValueError("no ordinary tokens left to draw random replacements from")
    return pool


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, rate: float, mask_id: int, special: np.ndarray,
                pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``rate`` of the non-special tokens; of those 80% become [MASK], 10% a random token, 10% stay.

    At least one token is picked when any can be: a micro-batch with nothing to predict has no loss, and
    Composer's loss weighting divides by the step's count of predicted tokens (at a tiny rate over short rows that
    count can be 0). Returns (inputs, labels) with labels -100 where nothing is predicted.
    """
    maskable = ~np.isin(ids, special)
    chosen = (rng.random(ids.shape[0]) < rate) & maskable
    if not chosen.any() and maskable.any():
        chosen[rng.choice(np.flatnonzero(maskable))] = True
    labels = np.where(chosen, ids, IGNORE_INDEX)
    action = rng.random(ids.shape[0])
    inputs = ids.copy()
    inputs[chosen & (action < 0.8)] = mask_id
    randomize = chosen & (action >= 0.8) & (action < 0.9)
    inputs[randomize] = pool[rng.integers(0, pool.size, int(randomize.sum()))]
    return inputs, labels
