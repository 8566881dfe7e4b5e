"""`bertforge eval mlm`: a model (HuggingFace directory or checkpoint) scored on prepared held-out datasets."""

from __future__ import annotations

from pathlib import Path

from bertforge.checkpoint.read import load_masked_lm
from bertforge.data.provenance import recorded_tokenizer
from bertforge.errors import ConfigError
from bertforge.eval.config import EvalConfig
from bertforge.eval.mlm import load_eval_set, mlm_metrics


def stream_name(dataset: str) -> str:
    """A dataset's name in the results: its folder, or the source folder above an ``eval/`` split."""
    parts = dataset.rstrip("/").split("/")
    return parts[-2] if parts[-1] == "eval" and len(parts) > 1 else parts[-1]


def dataset_tokenizer(dataset: str, model_path: Path) -> str:
    """The tokenizer beside an exported model, else the one the prepared dataset records."""
    if (model_path / "tokenizer.json").is_file():
        return str(model_path)
    recorded = recorded_tokenizer(dataset)
    if recorded is None:
        raise ConfigError(f"{dataset}: no tokenizer recorded (no stats.json provenance) and none beside the model; "
                          f"pass --tokenizer")
    return recorded


def evaluate_model(model: str, datasets: list[str], config: EvalConfig, *, seq_len: int | None = None,
                   tokenizer: str | None = None) -> dict:
    """Held-out MLM loss, accuracy and perplexity of ``model`` on each dataset and overall; rows of ``seq_len``
    (default: the model's max_position_embeddings)."""
    lm = load_masked_lm(model)
    seq_len = seq_len or lm.config.max_position_embeddings
    sets = [load_eval_set(stream_name(d), d, tokenizer or dataset_tokenizer(d, Path(model)), config, seq_len,
                          lm.config.vocab_size) for d in (d.rstrip("/") for d in datasets if d)]
    return mlm_metrics(lm, sets)


def format_result(result: dict) -> str:
    """The table `bertforge eval mlm` prints: one row per stream and one for all."""
    lines = [f"{'stream':12} {'loss':>8} {'accuracy':>9} {'perplexity':>11} {'predictions':>12}"]
    for name, row in [*result["streams"].items(), ("all", result)]:
        lines.append(f"{name:12} {row['loss']:>8.4f} {row['accuracy']:>9.2%} {row['perplexity']:>11.2f} "
                     f"{row['predictions']:>12,}")
    return "\n".join(lines)
