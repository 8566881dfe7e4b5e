"""One retrieval task, one seed: a dense (sentence-transformers) or ColBERT (PyLate) retriever from the starting
model, trained by sentence-transformers' trainer and scored after every epoch by the libraries' own evaluators
(``InformationRetrievalEvaluator``, and PyLate's MaxSim subclass of it) on the task's BEIR folder; the best epoch
(by the main metric on the first eval split) is what gets saved.

The retriever is built from a HuggingFace export as transformers' ``AutoModel`` loads it, the way a user of our
exports builds one: nothing here knows our model classes.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers import losses as st_losses
from sentence_transformers import models as st_models
from sentence_transformers.evaluation import InformationRetrievalEvaluator, SequentialEvaluator
from sentence_transformers.training_args import BatchSamplers
from transformers import PrinterCallback, TrainerCallback

from bertforge.checkpoint.read import read_model
from bertforge.errors import DataError
from bertforge.export.folder import export_model
from bertforge.finetune import say
from bertforge.finetune.beir import BeirSplit, read_beir, training_rows
from bertforge.finetune.config import RetrievalTaskConfig
from bertforge.finetune.loop import format_scores


def hf_start(start: str | Path, tokenizer: str | None, staging: Path) -> Path:
    """A HuggingFace directory with a tokenizer for ``start``: the directory itself, or (for a training
    checkpoint, or with another tokenizer) an export of it into ``staging``."""
    start = Path(start)
    if (start / "config.json").is_file() and (start / "tokenizer.json").is_file() and not tokenizer:
        return start
    model, known = read_model(start)
    tokenizer = tokenizer or known["tokenizer"]
    if not tokenizer:
        raise DataError(f"{start} holds no tokenizer and its run records none; pass --tokenizer DIR (the tokenizer "
                        f"it was pretrained with)")
    return export_model(model, staging, tokenizer, known["max_length"])


def build_retriever(task: RetrievalTaskConfig, start: Path, device: str) -> SentenceTransformer:
    """A dense model (the encoder, mean pooling, as ModernBERT's paper) or a PyLate ColBERT (the encoder and a
    projection to ``embedding_size`` per token)."""
    settings = task.train
    if task.model == "colbert":
        from pylate.models import ColBERT  # noqa: PLC0415 (PyLate only for ColBERT tasks: it loads slowly)

        return ColBERT(str(start), device=device, document_length=settings.max_length,
                       query_length=settings.query_length, embedding_size=settings.embedding_size)
    encoder = st_models.Transformer(str(start), max_seq_length=settings.max_length)
    pooling = st_models.Pooling(encoder.get_word_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[encoder, pooling], device=device)


def retrieval_loss(task: RetrievalTaskConfig, model: SentenceTransformer) -> torch.nn.Module:
    """In-batch negatives (plus the rows' hard negatives): MultipleNegativesRankingLoss or PyLate's Contrastive,
    cached when ``mini_batch_size`` is set; PyLate's Distillation when the rows carry teacher scores."""
    mini = task.train.mini_batch_size
    if task.model == "dense":
        if mini:
            return st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=mini)
        return st_losses.MultipleNegativesRankingLoss(model)
    from pylate import losses  # noqa: PLC0415 (PyLate only for ColBERT tasks)

    if task.data.scores_field:
        return losses.Distillation(model)
    return losses.CachedContrastive(model, mini_batch_size=mini) if mini else losses.Contrastive(model)


def evaluator(task: RetrievalTaskConfig, split: str, data: BeirSplit) -> InformationRetrievalEvaluator:
    """The library's evaluator of one split, asked for every metric the task can name."""
    kind = InformationRetrievalEvaluator
    if task.model == "colbert":
        from pylate.evaluation import PyLateInformationRetrievalEvaluator as kind  # noqa: PLC0415 (ColBERT only)
    return kind(data.queries, data.corpus, data.relevant, name=split, mrr_at_k=[10], ndcg_at_k=[10],
                accuracy_at_k=[1], precision_recall_at_k=[10, 100], map_at_k=[100],
                batch_size=task.train.eval_batch_size, show_progress_bar=False)


def split_scores(metrics: dict[str, float], task: RetrievalTaskConfig, model, prefix: str = "") -> dict:
    """``{split: {metric: value}}`` from an evaluator's flat result (``{prefix}{split}_{function}_{metric}``)."""
    function = model.similarity_fn_name
    return {split: {m: float(metrics[f"{prefix}{split}_{function}_{m}"]) for m in task.metrics}
            for split in task.data.eval_splits}


class _Progress(TrainerCallback):
    """Progress lines (step, loss, rows/s, ETA) and, after each epoch's evaluation, its record for W&B."""

    def __init__(self, task: RetrievalTaskConfig, seed: int, model, log, on_epoch) -> None:
        self.task, self.seed, self.model, self.log, self.on_epoch = task, seed, model, log, on_epoch
        self.losses: list[float] = []
        self.history: list[dict] = []
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))
            rate = state.global_step * args.per_device_train_batch_size / (time.perf_counter() - self.started)
            eta = (state.max_steps - state.global_step) * args.per_device_train_batch_size / rate
            self.log(f"  {self.task.name} seed {self.seed}: step {state.global_step}/{state.max_steps}, loss "
                     f"{logs['loss']:.4f}, {rate:,.0f} rows/s, ETA {eta:,.0f} s")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        scores = split_scores(metrics, self.task, self.model, prefix="eval_")
        record = {"epoch": round(state.epoch), "train_loss": float(np.mean(self.losses)) if self.losses else None,
                  "scores": scores}
        self.losses = []
        self.history.append(record)
        self.log(f"  {self.task.name} seed {self.seed}: epoch {record['epoch']}: {format_scores(scores)}")
        if self.on_epoch:
            self.on_epoch(record)


def train_retriever(task: RetrievalTaskConfig, start: str | Path, seed: int, out: Path, *,
                    tokenizer: str | None = None, log: Callable[[str], None] = say,
                    on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune ``start`` as ``task``'s retriever with ``seed``; saves the best epoch's model in ``out/model``
    (sentence-transformers' or PyLate's format) and returns its scores. Every BEIR split and the training rows
    are read and checked before the model is built."""
    evals = {split: read_beir(task.path(task.data.beir), split, task.source) for split in task.data.eval_splits}
    # Shuffled by the seed here: sentence-transformers 5.3's trainer seeds its batch sampler with 0, not with
    # args.seed, so without this every seed of a dense task would see the same batches and give the same model.
    rows = training_rows(task).shuffle(seed=seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = task.train.precision == "amp_bf16" or (task.train.precision == "auto" and device == "cuda")
    work = out / "trainer"
    shutil.rmtree(work, ignore_errors=True)  # an interrupted earlier try of this seed
    torch.manual_seed(seed)
    model = build_retriever(task, hf_start(start, tokenizer, work / "start"), device)
    settings = task.train
    steps_per_epoch = math.ceil(len(rows) / settings.batch_size)
    first = task.data.eval_splits[0]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work), num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.lr, weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio,
        lr_scheduler_type="linear", seed=seed, data_seed=seed, bf16=bf16, use_cpu=device == "cpu",
        batch_sampler=BatchSamplers.NO_DUPLICATES, eval_strategy="epoch", save_strategy="epoch",
        save_total_limit=1, load_best_model_at_end=True, greater_is_better=True,
        metric_for_best_model=f"eval_{first}_{model.similarity_fn_name}_{task.main_metric}",
        logging_steps=max(1, min(steps_per_epoch, steps_per_epoch * settings.epochs // 10)),
        report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    progress = _Progress(task, seed, model, log, on_epoch)
    collator = {}
    if task.model == "colbert":
        from pylate.utils import ColBERTCollator  # noqa: PLC0415 (ColBERT only)

        collator = {"data_collator": ColBERTCollator(model.tokenize)}
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=rows, loss=retrieval_loss(task, model),
        evaluator=SequentialEvaluator([evaluator(task, split, data) for split, data in evals.items()]),
        callbacks=[progress], **collator)
    trainer.remove_callback(PrinterCallback)  # its raw dicts; _Progress prints the lines worth reading
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    best = max(progress.history, key=lambda record: record["scores"][first][task.main_metric])
    model.save(str(out / "model"))
    shutil.rmtree(work, ignore_errors=True)
    return {"task": task.name, "kind": "retrieval", "model": task.model, "seed": seed, "start": str(start),
            "best_epoch": best["epoch"], "scores": best["scores"], "epochs": progress.history,
            "train_examples": len(rows), "examples_per_s": len(rows) * settings.epochs / train_seconds,
            "train_seconds": train_seconds}
