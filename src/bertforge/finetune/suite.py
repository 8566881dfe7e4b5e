"""A suite of tasks x seeds (GLUE, or any folder of task YAMLs): run in order (a task after the one it starts
from), each finished seed skipped on a rerun, then the results table: mean and spread over seeds per task and
metric, and the average of the tasks' main metrics.

The output folder holds ``<task>/seed<N>/result.json`` (written last, so it marks a finished seed) and
``<task>/seed<N>/model``; ``results.json`` and ``results.md`` hold the table. A killed suite reruns with the same
command: finished seeds are skipped, an interrupted one starts again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.errors import ConfigError
from bertforge.finetune import say
from bertforge.finetune.beir import check_retrieval_task
from bertforge.finetune.config import RetrievalTaskConfig, TaskConfig, load_task
from bertforge.paths import YAMLS_DIR


def task_files(target: str | Path) -> list[Path]:
    """The task YAMLs ``target`` names: a folder of them (or a suite under yamls/finetune/, like ``glue``), or
    one file (or a preset name)."""
    for folder in (Path(target), YAMLS_DIR / "finetune" / str(target)):
        if folder.is_dir():
            files = sorted(f for f in folder.glob("*.yaml") if not f.name.startswith("_"))
            if not files:
                raise ConfigError(f"{folder} holds no task YAML files")
            return files
    return [Path(target)]


def load_suite(target: str | Path, overrides: list[str] | None = None, only: list[str] | None = None,
               seeds: int | None = None, per_task: dict[str, list[str]] | None = None
               ) -> list[TaskConfig | RetrievalTaskConfig]:
    """The tasks of ``target`` (those named in ``only``), ``seeds`` each, in an order where every task comes after
    the one it starts from; ``per_task``: more overrides for the task of that name."""
    files = task_files(target)
    per_task = per_task or {}
    tasks = [load_task(f, overrides) for f in files]
    tasks = [load_task(f, [*(overrides or []), *per_task[t.name]]) if t.name in per_task else t
             for f, t in zip(files, tasks, strict=True)]
    names = [t.name for t in tasks]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ConfigError(f"{target}: no task(s) named {unknown}; it has {', '.join(names)}")
    tasks = [t for t in tasks if not only or t.name in only]
    for task in tasks:
        if seeds is not None:
            task.train.seeds = seeds
    return sorted(tasks, key=lambda t: (t.start_from is not None, t.name))


def fingerprint(task: TaskConfig | RetrievalTaskConfig, start: str) -> str:
    """What a seed's result depends on: the task's settings (W&B aside) and the starting model."""
    settings = dataclasses.asdict(task) | {"wandb": None, "source": None, "start": str(Path(start).resolve())}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_suite(tasks: list[TaskConfig | RetrievalTaskConfig], model: str | Path, out: str | Path, *,
              tokenizer: str | None = None, log: Callable[[str], None] = say) -> dict:
    """Run every seed of every task not yet done in ``out``; returns (and writes) the results table."""
    from bertforge.finetune.loop import train_seed  # noqa: PLC0415 (torch-free: load_suite serves plan and preflight)

    out = Path(out)
    check_tasks(tasks, out)
    for task in tasks:
        for seed in range(task.train.seed, task.train.seed + task.train.seeds):
            start = out / task.start_from / f"seed{seed}" / "model" if task.start_from else Path(model)
            folder = out / task.name / f"seed{seed}"
            key = fingerprint(task, str(model))
            done = folder / "result.json"
            if done.is_file():
                if json.loads(done.read_text()).get("fingerprint") == key:
                    log(f"{task.name} seed {seed}: done already ({done}), skipped")
                    continue
                raise ConfigError(f"{done} is the result of other settings or another model; fine-tune into "
                                  f"another --out, or delete {folder} to redo it")
            log(f"{task.name} seed {seed}: fine-tuning {start}")
            with _wandb_run(task, seed, folder) as on_epoch:
                if task.kind == "retrieval":
                    from bertforge.finetune.retrieval import train_retriever  # noqa: PLC0415 (sentence-transformers loads slowly)

                    result = train_retriever(task, start, seed, folder, tokenizer=tokenizer, log=log,
                                             on_epoch=on_epoch)
                else:
                    result = train_seed(task, start, seed, folder, tokenizer=tokenizer, log=log, on_epoch=on_epoch)
            write_text_atomic(done, json.dumps(result | {"fingerprint": key}, indent=1) + "\n")
    table = results_table(tasks, out)
    write_text_atomic(out / "results.json", json.dumps(table, indent=1) + "\n")
    write_text_atomic(out / "results.md", format_table(table))
    return table


def check_tasks(tasks: list[TaskConfig | RetrievalTaskConfig], out: Path | None = None) -> None:
    """What can be checked of the tasks before any training: a ``start_from`` that cannot be found (in ``out``, the
    suite's folder; None for a run's ``downstream:``, checked before it pretrains), a retrieval task's libraries
    and BEIR files (and, for a suite, every row of its qrels)."""
    names = {t.name for t in tasks}
    for task in tasks:
        if task.start_from and task.start_from not in names and not (out and (out / task.start_from).is_dir()):
            where = f"among the tasks run nor in {out}" if out else "among the run's downstream tasks"
            raise ConfigError(f"{task.source}: start_from '{task.start_from}' is neither {where}; add it to the tasks "
                              f"or run it first")
        if task.kind == "retrieval":
            check_retrieval_task(task, rows=out is not None)


def _wandb_run(task: TaskConfig | RetrievalTaskConfig, seed: int, folder: Path):
    """A W&B run per task and seed when the task enables it, logging each epoch's loss and scores."""
    if not task.wandb.enabled:
        return contextlib.nullcontext(None)

    @contextlib.contextmanager
    def run():
        import wandb  # noqa: PLC0415 (only when W&B is on)

        folder.mkdir(parents=True, exist_ok=True)
        with wandb.init(project=task.wandb.project, entity=task.wandb.entity, group=task.wandb.group or task.name,
                        name=f"{task.name}-seed{seed}", tags=task.wandb.tags, dir=str(folder),
                        config=dataclasses.asdict(task) | {"seed": seed}) as wandb_run:
            yield lambda record: wandb_run.log(
                {"epoch": record["epoch"], **({"train/loss": record["train_loss"]} if record["train_loss"] is not None
                                              else {}),
                 **{f"{split}/{m}": v for split, scores in record["scores"].items() for m, v in scores.items()}})

    return run()


def results_table(tasks: list[TaskConfig | RetrievalTaskConfig], out: Path) -> dict:
    """Mean and standard deviation over seeds, per task, split and metric (in percent), and the average over
    tasks of the main metric (on the first eval split)."""
    import numpy as np  # noqa: PLC0415 (torch-free: load_suite serves plan and preflight)

    rows, mains = [], []
    for task in tasks:
        results = [json.loads((out / task.name / f"seed{s}" / "result.json").read_text())
                   for s in range(task.train.seed, task.train.seed + task.train.seeds)]
        for split in task.data.eval_splits:
            for metric in task.metrics:
                values = 100 * np.array([r["scores"][split][metric] for r in results])
                main = split == task.data.eval_splits[0] and metric == task.main_metric
                rows.append({"task": task.name, "split": split, "metric": metric, "mean": float(values.mean()),
                             "std": float(values.std()), "seeds": len(values), "main": main})
                if main:
                    mains.append(float(values.mean()))
    return {"rows": rows, "average": float(np.mean(mains)) if mains else None}


def format_table(table: dict) -> str:
    lines = ["| task | split | metric | mean | std | seeds |", "|---|---|---|---:|---:|---:|"]
    for row in table["rows"]:
        mark = " *" if row["main"] else ""
        lines.append(f"| {row['task']} | {row['split']} | {row['metric']}{mark} | {row['mean']:.2f} | "
                     f"{row['std']:.2f} | {row['seeds']} |")
    if table["average"] is not None:
        lines.append(f"\nAverage of the main metrics (*): {table['average']:.2f}")
    return "\n".join(lines) + "\n"
