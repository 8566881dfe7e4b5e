"""The `eval:` block of a run config: which held-out data, how often, how much. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass, field

from bertforge.errors import ConfigError


@dataclass
class ProbeConfig:
    tasks: list[str] = field(default_factory=list)
    """Fine-tuning task YAMLs or suites (as ``downstream:`` takes them) probed with the frozen encoder at every
    evaluation: mean-pooled embeddings, a logistic regression fitted on the training rows (ridge for a regression
    task) scored by the task's main metric, or zero-shot nDCG@10 for a retrieval task. In metrics.jsonl (lines with
    ``"event": "probe"``), W&B (``probe/<task>/<metric>``) and curves.png. Empty: no probe."""
    max_rows: int = 1000
    """Rows per split (training and scored rows; queries and documents of a retrieval task), a seeded sample kept
    for the whole run: the probe's cost and its resolution (1,000 rows: one standard deviation of about 1.6 points of
    accuracy near 50%)."""

    def __post_init__(self) -> None:
        if self.max_rows < 10:
            raise ConfigError(f"'eval.probe.max_rows' must be at least 10, got {self.max_rows}")


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
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """Downstream tasks scored from the frozen encoder at the same evaluations (docs/eval.md, "The in-run
    probe")."""

    def __post_init__(self) -> None:
        if self.max_tokens < 1 or self.rows < 1 or self.max_seq_len < 0:
            raise ConfigError(f"'max_tokens' and 'rows' must be at least 1 and 'max_seq_len' at least 0, got "
                              f"{self.max_tokens}, {self.rows}, {self.max_seq_len}")
        if not 0.0 < self.mask_rate < 1.0:
            raise ConfigError(f"'mask_rate' must be in (0, 1), got {self.mask_rate}")
