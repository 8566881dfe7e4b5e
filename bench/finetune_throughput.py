"""Fine-tuning throughput: bertforge's packed, unpadded loop against transformers' Trainer, same model, same
examples, same batch size and optimizer settings, one after the other in one process.

    python data_prep/make_source_task.py data_prep/sample.yaml data/sample/source-task   # once
    python bench/finetune_throughput.py                      # a fresh tiny model, 2,048 passages, CPU
    python bench/finetune_throughput.py --vary-lengths                    # texts cut to random lengths
    python bench/finetune_throughput.py --model runs/quickstart/hf --max-examples 4096 --json out.json

Ours: ``bertforge.finetune.loop.train_seed`` (its training time only: examples / seconds). Theirs:
``transformers.Trainer`` with ``DataCollatorWithPadding`` (each batch padded to its longest example: the standard
recipe) and AdamW with the same LR, betas, eps, warmup, linear decay and gradient clipping; its own
``train_samples_per_second``. Both read the same tokenized examples (``load_examples``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bertforge.finetune.config import load_task
from bertforge.finetune.loop import train_seed
from bertforge.finetune.tasks import load_examples, task_tokenizer
from bertforge.model import ModernBertForMaskedLM, load_model_config


def fresh_model(out: Path, preset: str, tokenizer: str) -> Path:
    from bertforge.export.folder import export_model

    torch.manual_seed(0)
    return export_model(ModernBertForMaskedLM(load_model_config(preset)), out, tokenizer)


def transformers_trainer(task, model_dir: Path, examples, out: Path) -> dict:
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    settings = task.train
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=task.head.num_labels, classifier_pooling=task.head.pooling,
        attn_implementation="sdpa", reference_compile=False)
    data = Dataset.from_dict({"input_ids": examples.ids, "attention_mask": [[1] * len(x) for x in examples.ids],
                              "labels": examples.labels})
    opt = settings.optimizer
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=settings.batch_size, num_train_epochs=settings.epochs,
        learning_rate=opt.lr, weight_decay=opt.weight_decay, adam_beta1=opt.betas[0], adam_beta2=opt.betas[1],
        adam_epsilon=opt.eps, warmup_ratio=settings.warmup_ratio, lr_scheduler_type="linear",
        max_grad_norm=settings.max_grad_norm, save_strategy="no", report_to=[], logging_strategy="no",
        dataloader_num_workers=0, seed=settings.seed, bf16=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorWithPadding(AutoTokenizer.from_pretrained(model_dir)))
    started = time.perf_counter()
    metrics = trainer.train().metrics
    return {"examples_per_s": metrics["train_samples_per_second"], "seconds": time.perf_counter() - started}


def padded_share(lengths: list[int], batch: int, seed: int) -> float:
    """Share of the padded batches' token slots that are padding, for random batches of ``batch``."""
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
    slots = real = 0
    for start in range(0, len(order), batch):
        chosen = [lengths[i] for i in order[start:start + batch]]
        slots, real = slots + max(chosen) * len(chosen), real + sum(chosen)
    return 1 - real / slots


def varied_copy(task, out: Path) -> Path:
    """The task's training file with each text cut to a length drawn uniformly from 20 characters to its own."""
    import random

    rng = random.Random(0)
    rows = [json.loads(line) for line in task.file(task.data.train_split).read_text().splitlines()]
    field = task.data.text_fields[0]
    out.write_text("".join(json.dumps(r | {field: r[field][:rng.randint(20, max(20, len(r[field])))]}) + "\n"
                           for r in rows))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", default="yamls/finetune/sample-source.yaml")
    parser.add_argument("--model", help="a HuggingFace ModernBERT directory (default: a fresh --preset model)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--tokenizer", default="data/sample/tokenizer", help="for the fresh model")
    parser.add_argument("--max-examples", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--vary-lengths", action="store_true",
                        help="cut each training text to a random length (like GLUE's sentences and pairs) instead "
                             "of the task's near-uniform passages")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()
    overrides = [f"data.max_train_examples={args.max_examples}", f"train.epochs={args.epochs}", "train.seeds=1"]
    with tempfile.TemporaryDirectory() as tmp:
        task = load_task(args.task, overrides)
        if args.vary_lengths:
            overrides.append(f"data.files.{task.data.train_split}={varied_copy(task, Path(tmp) / 'varied.jsonl')}")
            task = load_task(args.task, overrides)
        model_dir = Path(args.model) if args.model else fresh_model(Path(tmp) / "model", args.preset,
                                                                    args.tokenizer)
        cls_id, sep_id = json.loads((model_dir / "config.json").read_text())["cls_token_id"], \
            json.loads((model_dir / "config.json").read_text())["sep_token_id"]
        examples = load_examples(task, task.data.train_split, task_tokenizer(model_dir, None), cls_id, sep_id,
                                 limit=args.max_examples)
        ours = train_seed(task, model_dir, task.train.seed, Path(tmp) / "ours", log=lambda _: None)
        theirs = transformers_trainer(task, model_dir, examples, Path(tmp) / "hf")
    lengths = [len(x) for x in examples.ids]
    summary = {"task": task.name + (" (lengths varied)" if args.vary_lengths else ""),
               "model": str(args.model or f"fresh {args.preset}"), "examples": len(lengths),
               "epochs": args.epochs, "batch_size": task.train.batch_size, "mean_length": sum(lengths) / len(lengths),
               "padding_share_hf": padded_share(lengths, task.train.batch_size, task.train.seed),
               "ours_examples_per_s": ours["examples_per_s"], "transformers_examples_per_s": theirs["examples_per_s"],
               "ratio": ours["examples_per_s"] / theirs["examples_per_s"], "threads": torch.get_num_threads(),
               "device": "cuda" if torch.cuda.is_available() else "cpu"}
    print(f"{summary['model']} on {summary['task']}: {len(lengths):,} examples x {args.epochs} epoch(s), batch "
          f"{task.train.batch_size}, mean length {summary['mean_length']:.0f} tokens (padding would be "
          f"{summary['padding_share_hf']:.0%} of a padded batch): bertforge {ours['examples_per_s']:,.1f} "
          f"examples/s, transformers Trainer {theirs['examples_per_s']:,.1f} examples/s, ratio "
          f"{summary['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
