"""Does pretraining transfer? Downstream scores against pretraining tokens: a fresh model (0 tokens) and every
checkpoint of one pretraining run, each fine-tuned by `bertforge finetune` on the same tasks over the same seeds.
Beside each point: the run's held-out MLM loss there and the anisotropy of its mean-pooled embeddings (mean
pairwise cosine; a collapsed model scores near 1), the two things to look at when a point loses to fresh.

    bertforge quickstart                      # the tokenizer and the shards
    bertforge train yamls/transfer/pretrain-tiny.yaml
    bertforge model init tiny runs/fresh-tiny --tokenizer data/sample/tokenizer
    python data_prep/make_syntax_task.py data_prep/sample.yaml data/sample/syntax-task
    python data_prep/make_retrieval_task.py data_prep/sample.yaml data/sample/retrieval-task-1200 --max-queries 1200
    python bench/transfer_curve.py --run runs/transfer-tiny --fresh runs/fresh-tiny --out runs/transfer-curve \\
        --task yamls/finetune/sample-syntax.yaml --task retrieval/sample-code-search \\
        --set sample-code-search:data.beir=$PWD/data/sample/retrieval-task-1200 --set sample-code-search:train.epochs=2

A point "beats fresh" on a task when its mean main metric exceeds fresh's by more than the larger of the two
seed ranges (max - min over seeds). Writes OUT/curve.json, OUT/curve.md (the table) and OUT/curve.png; reruns
skip every finished seed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def points(run: Path, fresh: str, batches: set[int] | None) -> list[dict]:
    """(name, tokens, model, held-out loss) for the fresh model and each verified checkpoint of ``run`` (those
    saved at ``batches``, if given)."""
    from omegaconf import OmegaConf

    from bertforge.checkpoint.run_folder import RunFolder, checkpoint_batch

    folder = RunFolder(run)
    config = OmegaConf.load(folder.config)
    per_batch = int(config.global_batch_size) * int(config.data.max_seq_len)  # packed rows are full
    evals = [json.loads(line) for line in folder.metrics.read_text().splitlines() if '"eval"' in line]
    evals = [e for e in evals if e.get("event") == "eval"]

    def loss_at(batch: int) -> float | None:
        before = [e for e in evals if e["batch"] <= batch]
        return max(before, key=lambda e: e["batch"])["loss"] if before else None

    found = [{"name": "fresh", "tokens": 0, "model": fresh, "loss": loss_at(0)}]
    for checkpoint in sorted(folder.valid_checkpoints(), key=checkpoint_batch):
        batch = checkpoint_batch(checkpoint)
        if batches and batch not in batches:
            continue
        found.append({"name": f"ba{batch}", "tokens": batch * per_batch, "model": str(checkpoint),
                      "loss": loss_at(batch)})
    return found


def anisotropy(model_dir: Path, texts: list[str]) -> float:
    """Mean cosine between the mean-pooled final hidden states of different texts."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    cosine = pooled @ pooled.T
    n = len(texts)
    return float((cosine.sum() - n) / (n * (n - 1)))


def seed_scores(task, out: Path) -> list[float]:
    split = task.data.eval_splits[0]
    return [100 * json.loads((out / task.name / f"seed{s}" / "result.json").read_text())["scores"][split][
        task.main_metric] for s in range(task.train.seed, task.train.seed + task.train.seeds)]


def plot(rows: list[dict], tasks, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        fresh = rows[0]["scores"][task.name]
        axis.axhspan(min(fresh), max(fresh), color="grey", alpha=0.25, label="fresh (seed range)")
        tokens = [r["tokens"] / 1e6 for r in rows[1:]]
        means = [sum(r["scores"][task.name]) / len(r["scores"][task.name]) for r in rows[1:]]
        low = [m - min(r["scores"][task.name]) for m, r in zip(means, rows[1:], strict=True)]
        high = [max(r["scores"][task.name]) - m for m, r in zip(means, rows[1:], strict=True)]
        axis.errorbar(tokens, means, yerr=[low, high], marker="o", capsize=3, label="pretrained (seed range)")
        axis.set_xlabel("pretraining tokens (millions)")
        axis.set_ylabel(f"{task.main_metric} (%)")
        axis.set_title(task.name)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the pretraining run's save_folder")
    parser.add_argument("--fresh", required=True, help="a freshly initialised model of the same size")
    parser.add_argument("--task", action="append", required=True, help="a task YAML or preset (repeat)")
    parser.add_argument("--set", action="append", default=[], metavar="TASK:KEY=VALUE",
                        help="an override for one task (repeat)")
    parser.add_argument("--out", required=True, help="output folder (fine-tunes go to OUT/<point>)")
    parser.add_argument("--batches", help="only the checkpoints saved at these batches (comma-separated)")
    args = parser.parse_args()
    from bertforge.finetune.config import load_task
    from bertforge.finetune.retrieval import hf_start
    from bertforge.finetune.suite import run_suite

    overrides: dict[str, list[str]] = {}
    for item in args.set:
        name, _, override = item.partition(":")
        overrides.setdefault(name, []).append(override)
    tasks = [load_task(path) for path in args.task]
    tasks = [load_task(path, overrides.get(task.name, [])) for path, task in zip(args.task, tasks, strict=True)]
    classification = next((t for t in tasks if t.kind != "retrieval"), None)
    texts = []
    if classification is not None:
        from bertforge.finetune.tasks import read_rows

        rows = read_rows(classification, classification.data.eval_splits[0])
        texts = [str(text) for text in rows[classification.data.text_fields[0]][:64]]
    out = Path(args.out)
    rows = []
    for point in points(Path(args.run), args.fresh,
                        {int(b) for b in args.batches.split(",")} if args.batches else None):
        start = hf_start(point["model"], None, out / point["name"] / "start")
        table = run_suite(tasks, start, out / point["name"])
        point["means"] = {f"{row['task']} {row['metric']}": row["mean"] for row in table["rows"]}
        point["anisotropy"] = anisotropy(start, texts) if texts else None
        point["scores"] = {task.name: seed_scores(task, out / point["name"]) for task in tasks}
        rows.append(point)
    fresh = rows[0]["scores"]
    lines = ["| point | tokens | held-out MLM loss | anisotropy | "
             + " | ".join(f"{t.name} {t.main_metric} (range)" for t in tasks) + " | beats fresh on |",
             "|---|---:|---:|---:|" + "---:|" * len(tasks) + "---|"]
    for row in rows:
        cells, wins = [], []
        for task in tasks:
            mine, theirs = row["scores"][task.name], fresh[task.name]
            mean = sum(mine) / len(mine)
            cells.append(f"{mean:.1f} ({min(mine):.1f}-{max(mine):.1f})")
            spread = max(max(mine) - min(mine), max(theirs) - min(theirs))
            if row is not rows[0] and mean - sum(theirs) / len(theirs) > spread:
                wins.append(task.name)
        row["beats_fresh_on"] = wins
        loss = f"{row['loss']:.2f}" if row["loss"] is not None else "-"
        aniso = f"{row['anisotropy']:.2f}" if row["anisotropy"] is not None else "-"
        lines.append(f"| {row['name']} | {row['tokens']:,} | {loss} | {aniso} | " + " | ".join(cells)
                     + f" | {', '.join(wins) or '-'} |")
    names = list(rows[0]["means"])
    lines += ["", "Every metric, mean over seeds (%):", "", "| point | " + " | ".join(names) + " |",
              "|---|" + "---:|" * len(names)]
    lines += [f"| {row['name']} | " + " | ".join(f"{row['means'][n]:.1f}" for n in names) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(rows, indent=1) + "\n")
    (out / "curve.md").write_text(text)
    plot(rows, tasks, out / "curve.png")
    print(text, end="")


if __name__ == "__main__":
    main()
