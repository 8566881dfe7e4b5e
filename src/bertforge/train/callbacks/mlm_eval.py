"""Held-out masked-LM evaluation during training: at the start, at every ``eval.interval`` and at the end."""

from __future__ import annotations

import json

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from bertforge.checkpoint.run_folder import RunFolder
from bertforge.eval.mlm import load_eval_set, mlm_metrics
from bertforge.train.callbacks.eval_clock import EvalClock
from bertforge.train.config import TrainConfig
from bertforge.train.precision import autocast


class MLMEval(Callback):
    """Evaluates the model on its fixed held-out batches (bertforge.eval.mlm) and logs loss, accuracy and
    perplexity, overall and per stream, to metrics.jsonl (lines with ``"event": "eval"``), the console and the
    loggers (W&B: ``eval/loss``, ``eval/<stream>/loss``, ...). Stateless apart from its batches, which are the same
    on every start: a resumed run evaluates again at the same steps and gets the same numbers."""

    def __init__(self, config: TrainConfig, folder: RunFolder, precision: str = "fp32"):
        self.config = config
        self.precision = precision  # the run's, resolved (train/precision.py): evaluation casts as training does
        self.folder = folder
        self.clock = EvalClock(config.eval.interval)
        self.sets: list = []

    def fit_start(self, state: State, logger: Logger) -> None:
        cfg = self.config
        seq_len = cfg.eval.max_seq_len or cfg.data.max_seq_len
        self.sets = [load_eval_set(name, local, cfg.data.tokenizer, cfg.eval, seq_len, cfg.model.vocab_size,
                                   cfg.data.cache_dir) for name, local in cfg.eval_streams().items()]
        if self.clock.at_start(state):
            self._evaluate(state, logger)

    def batch_end(self, state: State, logger: Logger) -> None:
        if self.clock.after_batch(state):
            self._evaluate(state, logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        if self.clock.at_end(state):
            self._evaluate(state, logger)

    def _evaluate(self, state: State, logger: Logger) -> None:
        model = getattr(state.model, "module", state.model).model
        device = next(model.parameters()).device
        result = mlm_metrics(model, self.sets, device, autocast=lambda: autocast(self.precision, device.type))
        batch, tokens = int(state.timestamp.batch), int(state.timestamp.token)
        self.clock.evaluated(state)
        metrics = {f"eval/{key}": result[key] for key in ("loss", "accuracy", "perplexity")}
        for name, row in result["streams"].items():
            metrics.update({f"eval/{name}/{key}": row[key] for key in ("loss", "accuracy", "perplexity")})
        logger.log_metrics(metrics)
        if dist.get_global_rank() != 0:
            return
        record = {"event": "eval", "batch": batch, "tokens": tokens, **result}
        with self.folder.metrics.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        streams = ", ".join(f"{name} {row['loss']:.4f}" for name, row in result["streams"].items())
        print(f"[eval at batch {batch}] tokens {tokens:,} loss {result['loss']:.4f} accuracy {result['accuracy']:.2%} "
              f"perplexity {result['perplexity']:.1f} ({streams})", flush=True)
