"""One task, one seed: a classifier from the starting model, trained on packed, unpadded batches, scored after
every epoch; the best epoch (by the task's main metric on its first eval split) is what gets saved.

A batch is its examples' tokens end to end with ``cu_seqlens`` between them, as in pretraining: no compute is
spent on padding, however unequal the lengths.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from bertforge.checkpoint.read import load_checkpoint_model
from bertforge.errors import DataError
from bertforge.export.folder import export_model
from bertforge.finetune import say
from bertforge.finetune.config import TaskConfig
from bertforge.finetune.metrics import predictions, score
from bertforge.finetune.tasks import Examples, load_examples, task_tokenizer
from bertforge.model import ClassifierConfig, ModernBertForSequenceClassification
from bertforge.train.optim import build_optimizer


def initial_model(start: str | Path, head: ClassifierConfig) -> ModernBertForSequenceClassification:
    """A classifier for ``head`` from a HuggingFace directory (a masked LM, or a fine-tuned classifier whose
    encoder and head carry over) or from a training checkpoint (ours or the research repository's)."""
    path = Path(start)
    if (path / "config.json").is_file():
        return ModernBertForSequenceClassification.from_pretrained(path, head)

    mlm = load_checkpoint_model(path)
    return ModernBertForSequenceClassification.from_state(mlm.config, head, mlm.state_dict(), source=str(path))


def packed_batches(examples: Examples, order: list[int], size: int, device) -> Iterator[dict]:
    """Batches of ``size`` examples in ``order``, each one flat stream of tokens with its ``cu_seqlens``."""
    for start in range(0, len(order), size):
        chosen = order[start:start + size]
        lengths = torch.tensor([len(examples.ids[i]) for i in chosen])
        yield {
            "input_ids": torch.tensor([t for i in chosen for t in examples.ids[i]], device=device),
            "cu_seqlens": torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(device, torch.int32),
            "max_seqlen": int(lengths.max()),
            "labels": torch.tensor([examples.labels[i] for i in chosen], device=device),
        }


def linear_schedule(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warmup over ``warmup`` steps, then linear decay to 0 at ``total``."""
    return lambda step: step / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


@torch.no_grad()
def task_scores(model, examples: Examples, task: TaskConfig, autocast) -> dict[str, float]:
    model.eval()
    device = next(model.parameters()).device
    logits = []
    for batch in packed_batches(examples, list(range(len(examples.ids))), task.train.eval_batch_size, device):
        with autocast():
            logits.append(model(batch["input_ids"], cu_seqlens=batch["cu_seqlens"],
                                max_seqlen=batch["max_seqlen"]).logits.float().cpu())
    predicted = predictions(torch.cat(logits).numpy(), task.head.problem_type)
    labels = np.asarray(examples.labels)
    return {metric: score(metric, predicted, labels) for metric in task.metrics}


def train_seed(task: TaskConfig, start: str | Path, seed: int, out: Path, *, tokenizer: str | None = None,
               log: Callable[[str], None] = say,
               on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune ``start`` on ``task`` with ``seed``; saves the best epoch's model in ``out/model`` and returns its
    scores. ``on_epoch`` gets each epoch's record (W&B)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = task.train.precision == "amp_bf16" or (task.train.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    torch.manual_seed(seed)
    model = initial_model(start, task.head).to(device)
    text = task_tokenizer(start, tokenizer)
    ids = (model.config.cls_token_id, model.config.sep_token_id)
    train = load_examples(task, task.data.train_split, text, *ids, limit=task.data.max_train_examples)
    evals = {split: load_examples(task, split, text, *ids) for split in task.data.eval_splits}
    if not train.ids or not all(e.ids for e in evals.values()):
        empty = [s for s, e in {task.data.train_split: train, **evals}.items() if not e.ids]
        raise DataError(f"{task.source}: no labelled examples in split(s) {empty}; check data.label_field and "
                        f"data.missing_label")

    settings = task.train
    optimizer = build_optimizer(model, settings.optimizer)
    steps_per_epoch = math.ceil(len(train.ids) / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(int(settings.warmup_ratio * total),
                                                                               total))
    order_rng = torch.Generator().manual_seed(seed)
    history, best, train_seconds, done = [], None, 0.0, 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        started = time.perf_counter() - train_seconds
        losses = []
        order = torch.randperm(len(train.ids), generator=order_rng).tolist()
        for batch in packed_batches(train, order, settings.batch_size, device):
            with autocast():
                loss = model(**batch).loss
            loss.backward()
            if settings.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss))
            done += 1
            if done % max(1, total // 10) == 0 or done == total:
                rate = done * settings.batch_size / (time.perf_counter() - started)
                log(f"  {task.name} seed {seed}: step {done}/{total}, loss {np.mean(losses[-20:]):.4f}, "
                    f"{rate:,.0f} examples/s, ETA {(total - done) * settings.batch_size / rate:,.0f} s")
        train_seconds = time.perf_counter() - started
        scores = {split: task_scores(model, examples, task, autocast) for split, examples in evals.items()}
        main = scores[task.data.eval_splits[0]][task.main_metric]
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "scores": scores})
        if on_epoch:
            on_epoch(history[-1])
        log(f"  {task.name} seed {seed}: epoch {epoch}: {format_scores(scores)}")
        if best is None or main > best[0]:
            best = (main, epoch, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    export_model(model.cpu(), out / "model", tokenizer or (str(start) if Path(start, "tokenizer.json").is_file()
                                                            else None))
    result = {"task": task.name, "seed": seed, "start": str(start), "best_epoch": best[1],
              "scores": history[best[1] - 1]["scores"], "epochs": history, "train_examples": len(train.ids),
              "left_out": {s: e.left_out for s, e in {task.data.train_split: train, **evals}.items()},
              "examples_per_s": len(train.ids) * settings.epochs / train_seconds, "train_seconds": train_seconds}
    return result


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """``split metric 12.34, ...; split ...``: one epoch's scores on a progress line, in percent."""
    return "; ".join(f"{split} " + ", ".join(f"{m} {100 * v:.2f}" for m, v in metrics.items())
                     for split, metrics in scores.items())
