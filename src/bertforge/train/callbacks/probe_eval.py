"""The frozen-encoder probe during training (finetune/probe.py), at the same steps as the held-out MLM loss."""

from __future__ import annotations

import json

from composer.core import Callback, State
from composer.loggers import Logger
from composer.utils import dist

from bertforge.checkpoint.run_folder import RunFolder
from bertforge.data.tokenizer import load_tokenizer
from bertforge.finetune.probe import ProbeTask, load_probe_task, run_probes
from bertforge.finetune.suite import load_suite
from bertforge.train.callbacks.eval_clock import EvalClock
from bertforge.train.config import TrainConfig
from bertforge.train.precision import autocast


class ProbeEval(Callback):
    """Scores every task of ``eval.probe.tasks`` from the frozen encoder and logs each score to metrics.jsonl (lines
    with ``"event": "probe"``: the score, its metric and its seconds per task), the console and the loggers
    (W&B: ``probe/<task>/<metric>``). Every rank embeds every row (an FSDP2 forward needs all of them), so each
    computes the same scores; rank 0 writes them. The tasks' rows are read and tokenized once, at the start."""

    def __init__(self, config: TrainConfig, folder: RunFolder, precision: str = "fp32"):
        self.config = config
        self.folder = folder
        self.precision = precision
        self.clock = EvalClock(config.eval.interval)
        self.probes: list[ProbeTask] = []

    def fit_start(self, state: State, logger: Logger) -> None:
        cfg = self.config
        tokenizer = load_tokenizer(cfg.data.tokenizer).backend_tokenizer
        self.probes = [load_probe_task(task, tokenizer, cfg.model.cls_token_id, cfg.model.sep_token_id,
                                       cfg.eval.probe.max_rows)
                       for target in cfg.eval.probe.tasks for task in load_suite(target)]
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
        results = run_probes(model, self.probes, device, autocast=lambda: autocast(self.precision, device.type))
        self.clock.evaluated(state)
        logger.log_metrics({f"probe/{name}/{row['metric']}": row["score"] for name, row in results.items()})
        if dist.get_global_rank() != 0:
            return
        batch, tokens = int(state.timestamp.batch), int(state.timestamp.token)
        seconds = sum(row["seconds"] for row in results.values())
        record = {"event": "probe", "batch": batch, "tokens": tokens, "tasks": results, "seconds": seconds}
        with self.folder.metrics.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        scores = ", ".join(f"{name} {row['metric']} {100 * row['score']:.1f}" for name, row in results.items())
        print(f"[probe at batch {batch}] tokens {tokens:,}: {scores} ({seconds:.1f} s)", flush=True)
