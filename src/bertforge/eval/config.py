"""The `eval:` block of a run config: which held-out data, how often, how much. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field

from bertforge.errors import ConfigError


@dataclass
class EvalConfig:
    interval: str | None = None
    """How often to evaluate, in Composer time ('2000ba', or tokens: '1000000000tok'); also at the start and at
    the end of the run. Empty or null: no evaluation (``eval.interval=`` on the command line switches it off)."""
    streams: dict[str, str] = field(default_factory=dict)
    """Held-out datasets by name (folders holding index.json). Empty: the ``eval/`` split that `bertforge prep`'s
    ``holdout`` made beside every training stream (``<local>/eval``)."""
    max_tokens: int = 1_000_000
    """Real tokens evaluated per stream (whole documents, the first in the dataset's order)."""
    max_seq_len: int = 0
    """Row length of the eval batches; 0: the training rows' (``data.max_seq_len``). An 8192 phase can evaluate
    at 1024 and the reverse."""
    rows: int = 8
    """Rows per eval micro-batch."""
    mask_rate: float = 0.15
    """Share of tokens predicted (ModernBERT evaluates at 15%, trains at 30%)."""
    seed: int = 17
    """Seed of the masking: every evaluation sees exactly the same masked batches."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.rows < 1 or self.max_seq_len < 0:
            raise ConfigError(f"'max_tokens' and 'rows' must be at least 1 and 'max_seq_len' at least 0, got "
                              f"{self.max_tokens}, {self.rows}, {self.max_seq_len}")
        if not 0.0 < self.mask_rate < 1.0:
            raise ConfigError(f"'mask_rate' must be in (0, 1), got {self.mask_rate}")
