"""The report card of a run: for a fresh model of the run's config and for each checkpoint, the held-out MLM loss
and accuracy and each task fine-tuned over its seeds, written under ``out``:

    out/points/<point>/mlm.json            held-out MLM (the run's eval streams and eval settings)
    out/points/<point>/tasks/<task>/seed<N>/result.json   one fine-tuning (bertforge finetune's layout)
    out/points/<point>/point.json          the point's figures, once all of the above are there
    out/report.json, report.md, report.png  the table and the picture (render.py)

Every result is written once it is complete, so a rerun skips what is done and a killed report loses at most the
task and seed in hand. A checkpoint that does not verify is named in the report and passed over; the others are
scored. Each point's model is exported into ``points/<point>/model`` while it is needed, then removed.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

from bertforge.atomic import write_text_atomic
from bertforge.errors import CheckpointError, ConfigError
from bertforge.finetune.config import RetrievalTaskConfig, TaskConfig
from bertforge.finetune.suite import check_tasks, load_suite, run_suite
from bertforge.report.points import Point, checkpoint_path, open_report_run, report_points
from bertforge.report.render import draw_report, report_markdown
from bertforge.store import RemoteFolder, is_remote
from bertforge.train.config import TrainConfig, load_train_config

Task = TaskConfig | RetrievalTaskConfig


def say(message: str) -> None:
    print(message, flush=True)


def make_report(run: str, targets: list[str] | None = None, out: str | Path | None = None, *,
                overrides: list[str] | None = None, per_task: list[str] | None = None, seeds: int | None = None,
                every: int | None = None, log: Callable[[str], None] = say) -> dict:
    """Score every point of ``run`` on the tasks of ``targets`` (task YAMLs or suites; default the run's
    ``downstream:``), each with ``overrides`` and its own ``per_task`` ones (``TASK:KEY=VALUE``), and write the
    report into ``out`` (default RUN/report, or runs/report/<name> for a run in an object store); returns
    report.json's dict."""
    out = Path(out or (f"runs/report/{run.rstrip('/').rpartition('/')[2]}" if is_remote(run) else
                       Path(run) / "report"))
    folder = open_report_run(run, out / "staging")
    config = load_train_config(folder.config)
    tasks = report_tasks(targets if targets is not None else config.downstream, overrides, per_task or [], seeds)
    points = report_points(folder, every)
    log(f"report of {folder.location}: {len(points) - 1} checkpoint(s) and a fresh model; "
        f"{len(tasks)} task(s): {', '.join(t.name for t in tasks) or '(none: held-out MLM only)'}")
    rows = []
    for point in points:
        log(f"== {point.name} ({point.tokens:,} tokens)")
        try:
            rows.append(score_point(point, lambda p=point: _stage_model(p, folder, config, out), config, tasks,
                                    out / "points" / point.name, log))
        except CheckpointError as err:  # named, passed over; the rest of the report goes on
            log(f"passing over {point.name}: {err}")
            rows.append({"name": point.name, "tokens": point.tokens, "checkpoint": point.checkpoint,
                         "problem": str(err)})
    report = summarize(rows, tasks, config.run_name, folder.location)
    write_text_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_text_atomic(out / "report.md", report_markdown(report))
    draw_report(report, out / "report.png")
    log(f"report in {out}/report.md, report.json and report.png")
    return report


def report_tasks(targets: list[str], overrides: list[str] | None, per_task: list[str], seeds: int | None
                 ) -> list[Task]:
    """The tasks to score, checked before any point is scored."""
    extra: dict[str, list[str]] = {}
    for item in per_task:
        name, sep, override = item.partition(":")
        if not sep or "=" not in override:
            raise ConfigError(f"--set takes TASK:KEY=VALUE (sample-code-search:train.epochs=2), got {item!r}")
        extra.setdefault(name, []).append(override)
    tasks = [task for target in targets for task in load_suite(target, overrides, seeds=seeds, per_task=extra)]
    unknown = sorted(set(extra) - {t.name for t in tasks})
    if unknown:
        raise ConfigError(f"--set names {unknown}, not among the tasks ({', '.join(t.name for t in tasks)})")
    check_tasks(tasks)
    return tasks


def _stage_model(point: Point, folder, config: TrainConfig, out: Path) -> Path:
    """The point's model as a HuggingFace directory with its tokenizer: a fresh one (initialised as the run was,
    with its seed) or the checkpoint's export."""
    from bertforge.export.folder import export_fresh_model  # noqa: PLC0415 (torch only when a model is needed)
    from bertforge.finetune.retrieval import hf_start  # noqa: PLC0415 (sentence-transformers loads slowly)

    staged = out / "points" / point.name / "model"
    if point.checkpoint is None:
        return export_fresh_model(config.model, staged, config.seed, config.data.tokenizer)
    return hf_start(checkpoint_path(folder, point), None, staged)


def score_point(point: Point, stage: Callable[[], Path], config: TrainConfig, tasks: list[Task], where: Path,
                log: Callable[[str], None]) -> dict:
    """The point's held-out MLM figures and each task's main metric per seed (in percent), computing only what is
    not on disk yet."""
    mlm_file = where / "mlm.json"
    seeds_missing = any(not (where / "tasks" / t.name / f"seed{s}" / "result.json").is_file()
                        for t in tasks for s in _seeds(t))
    model = None
    if not mlm_file.is_file() or seeds_missing:
        model = stage()
    if not mlm_file.is_file():
        write_text_atomic(mlm_file, json.dumps(held_out_mlm(model, config), indent=1) + "\n")
    if tasks:
        run_suite(tasks, model or where / "model", where / "tasks", log=log)
    if model is not None:
        shutil.rmtree(model)
    row = {"name": point.name, "tokens": point.tokens, "checkpoint": point.checkpoint,
           "mlm": json.loads(mlm_file.read_text()),
           "scores": {t.name: seed_scores(t, where / "tasks") for t in tasks}}
    write_text_atomic(where / "point.json", json.dumps(row, indent=1) + "\n")
    return row


def held_out_mlm(model: Path, config: TrainConfig) -> dict | None:
    """Loss and accuracy on the run's held-out streams with its eval settings (float32), or None when the run has
    no held-out data to read."""
    from bertforge.eval.evaluate import evaluate_model  # noqa: PLC0415 (torch)

    streams = [s for s in config.eval_streams().values()
               if (RemoteFolder(s).exists("index.json") if is_remote(s) else (Path(s) / "index.json").is_file())]
    if not streams:
        return None
    result = evaluate_model(str(model), streams, config.eval, seq_len=config.eval.max_seq_len or
                            config.data.max_seq_len)
    return {"loss": result["loss"], "accuracy": result["accuracy"], "predictions": result["predictions"]}


def _seeds(task: Task) -> range:
    return range(task.train.seed, task.train.seed + task.train.seeds)


def seed_scores(task: Task, out: Path) -> list[float]:
    """The task's main metric on its first eval split, per seed, in percent."""
    split = task.data.eval_splits[0]
    return [100 * json.loads((out / task.name / f"seed{s}" / "result.json").read_text())["scores"][split][
        task.main_metric] for s in _seeds(task)]


def summarize(rows: list[dict], tasks: list[Task], run_name: str, location: str) -> dict:
    """Per point and task: mean, standard deviation and range over seeds, and whether the point beats the fresh
    model beyond the seed spread: its mean above fresh's by more than the larger of the two seed ranges."""
    fresh = rows[0]
    metrics = {t.name: f"{t.main_metric} ({t.data.eval_splits[0]})" for t in tasks}
    for row in rows:
        if "problem" in row:
            continue
        row["summary"] = {}
        for task in tasks:
            mine, theirs = row["scores"][task.name], fresh["scores"][task.name]
            spread = max(max(mine) - min(mine), max(theirs) - min(theirs))
            mean = statistics.mean(mine)
            row["summary"][task.name] = {
                "mean": mean, "std": statistics.pstdev(mine), "min": min(mine), "max": max(mine),
                "beats_fresh": row is not fresh and mean - statistics.mean(theirs) > spread}
    return {"run": run_name, "location": location, "metrics": metrics, "points": rows}
