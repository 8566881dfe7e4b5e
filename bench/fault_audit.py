"""The fault audit (docs/faults.md): wrong input to the commands users run most, tried as a user would.

    python bench/fault_audit.py --workspace /tmp/audit [--json bench/results/fault_audit.json]

Each case runs one `bertforge` command in a workspace holding the quickstart's small run (`bertforge quickstart
--small`, made first when missing) and a few broken files, and is judged by what the user sees: **clean** when the
command does what the case expects (refuses with exit 2 and one line naming the file or key, no traceback, or
succeeds where the input is valid after all), else **open** with what happened. The table it prints is the one in
docs/faults.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

BERTFORGE = str(Path(sys.executable).with_name("bertforge"))


@dataclass
class Case:
    command: str
    """What it runs: ``bertforge`` and its arguments, in the workspace."""
    fault: str
    """What is wrong, as a user would put it."""
    expect: str = "refuse"
    """refuse (exit 2, one line, naming ``names``) or succeed (exit 0)."""
    names: str = ""
    """A piece of text the refusal must hold: the file, key or value at fault."""


def write_files(ws: Path) -> None:
    """The broken and odd inputs the cases point at."""
    (ws / "text").mkdir(exist_ok=True)
    (ws / "text" / "a.txt").write_text("A document of plain text, long enough to tokenize into a few pieces.\n")
    (ws / "empty.jsonl").write_text("")
    (ws / "not-yaml.yaml").write_text("key: [unclosed\n")
    (ws / "a-list.yaml").write_text("- just\n- a list\n")
    (ws / "not-a-checkpoint.pt").write_bytes(b"\x00" * 64)
    (ws / "a-file").write_text("a file where a folder is wanted\n")
    recipe = {"tokenizer": "data/sample-small/tokenizer", "out_dir": "audit-mds", "max_seq_len": 256,
              "sources": [{"name": "notes", "inputs": [{"format": "files", "path": "text", "include": ["*.txt"]}]}]}
    (ws / "recipe.yaml").write_text(json.dumps(recipe))
    nomatch = recipe | {"sources": [{"name": "notes", "inputs": [{"format": "files", "path": "text",
                                                                  "include": ["*.md"]}]}]}
    (ws / "recipe-nomatch.yaml").write_text(json.dumps(nomatch))
    empty = recipe | {"out_dir": "mds-empty",
                      "sources": [{"name": "notes", "inputs": [{"format": "jsonl", "path": "empty.jsonl"}]}]}
    shutil.rmtree(ws / "mds-empty", ignore_errors=True)
    (ws / "recipe-empty.yaml").write_text(json.dumps(empty))
    files = {"train": "task/train.jsonl", "validation": "task/validation.jsonl"}
    task = {"name": "audit-task", "data": {"files": files, "text_fields": ["text"]}, "head": {"labels": ["a", "b"]},
            "train": {"epochs": 1, "seeds": 1, "max_length": 32}}
    (ws / "task").mkdir(exist_ok=True)
    rows = [{"text": f"row {i}", "label": "ab"[i % 2]} for i in range(20)]
    (ws / "task" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ws / "task" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (ws / "task.yaml").write_text(json.dumps(task))
    (ws / "task-bad-label.yaml").write_text(json.dumps(task | {"head": {"labels": ["x", "y"]}}))
    (ws / "task-no-split.yaml").write_text(json.dumps(task | {"data": task["data"] | {
        "files": {"train": "task/train.jsonl", "validation": "task/missing.jsonl"}}}))
    (ws / "task-metric.yaml").write_text(json.dumps(task | {"metrics": ["bleu"]}))
    (ws / "task-beir.yaml").write_text(json.dumps({"name": "s", "kind": "retrieval", "data": {"beir": "no-beir"}}))


RUN = "runs/quickstart-small"
CKPT = f"{RUN}/latest-rank0.pt"
HF = f"{RUN}/hf"
CONFIG = f"{RUN}/config.yaml"

CASES = [
    # prep
    Case("prep missing-recipe.yaml", "the recipe file does not exist", names="missing-recipe.yaml"),
    Case("prep not-yaml.yaml", "the recipe is not valid YAML", names="not-yaml.yaml"),
    Case("prep a-list.yaml", "the recipe is a YAML list, not a mapping", names="a-list.yaml"),
    Case("prep recipe.yaml max_seq_len=0", "max_seq_len 0", names="max_seq_len"),
    Case("prep recipe.yaml max_seq_len=-5", "a negative max_seq_len", names="max_seq_len"),
    Case("prep recipe.yaml holdout.fraction=1.5", "a held-out share above 1", names="fraction"),
    Case("prep recipe.yaml workers=0", "no workers", names="workers"),
    Case("prep recipe.yaml files_per_unit=0", "units of no files", names="files_per_unit"),
    Case("prep recipe.yaml tokenizer=no-such-tokenizer", "the tokenizer is missing", names="no-such-tokenizer"),
    Case("prep recipe-nomatch.yaml", "an include that matches no file", names="notes"),
    Case("prep recipe-empty.yaml", "an empty JSONL file as the only input", names="notes"),
    Case("prep recipe.yaml sources.0.inputs.0.path=elsewhere", "an override of one item of a list",
         names="list"),
    Case("prep recipe.yaml out_dir=a-file", "out_dir is a file", names="a-file"),
    Case("prep recipe.yaml sorces=[]", "a misspelt key", names="sorces"),
    Case("prep recipe.yaml not-an-override", "an override without '='", names="not-an-override"),
    # train
    Case("train missing.yaml", "the run config does not exist", names="missing.yaml"),
    Case("train a-list.yaml", "the run config is a list", names="a-list.yaml"),
    Case(f"train {CONFIG} max_duration=abc", "max_duration is not a time", names="max_duration"),
    Case(f"train {CONFIG} max_duration=0tok", "max_duration zero", names="max_duration"),
    Case(f"train {CONFIG} global_batch_size=0", "a batch of zero rows", names="global_batch_size"),
    Case(f"train {CONFIG} optimizer.lr=-1", "a negative LR", names="lr"),
    Case(f"train {CONFIG} optimizer.name=sgd2", "an unknown optimizer", names="sgd2"),
    Case(f"train {CONFIG} schedule.name=cosine2", "an unknown schedule", names="cosine2"),
    Case(f"train {CONFIG} data.streams={{}}", "an empty mapping as an override (merged: it changes nothing, and the "
         "finished run has nothing left to train)", expect="succeed"),
    Case(f"train {CONFIG} data.streams.code.local=no-such-dir", "a stream folder that does not exist",
         names="no-such-dir"),
    Case(f"train {CONFIG} data.max_seq_len=100000", "rows longer than the model's positions",
         names="max_seq_len"),
    Case(f"train {CONFIG} data.mask_rate=1.5", "a mask rate above 1", names="mask_rate"),
    Case(f"train {CONFIG} eval.interval=5xyz", "an eval interval in unknown units", names="eval.interval"),
    Case(f"train {CONFIG} checkpoint.interval=0ba", "checkpoints every zero batches", names="checkpoint.interval"),
    Case(f"train {CONFIG} precision=fp16", "a precision bertforge does not offer", names="precision"),
    Case(f"train {CONFIG} parallelism=zero3", "an unknown parallelism", names="parallelism"),
    Case(f"train {CONFIG} save_folder=a-file", "save_folder is a file", names="a-file"),
    Case(f"train {CONFIG} init_from=no-such-model", "init_from that does not exist", names="no-such-model"),
    Case(f"train {CONFIG} includes.model=models/huge.yaml", "an override of includes (not a key)",
         names="includes"),
    Case(f"train {CONFIG} downstream=[no-such-task.yaml] export_dir=x", "a downstream task that does not exist",
         names="no-such-task.yaml"),
    Case(f"train {CONFIG} eval.interval=null eval.probe.tasks=[task.yaml]", "a probe with the eval switched off",
         names="eval.interval"),
    # export and average
    Case("export no-such.pt out-a", "the checkpoint does not exist", names="no-such.pt"),
    Case("export not-a-checkpoint.pt out-b", "a file that is not a checkpoint", names="not-a-checkpoint.pt"),
    Case(f"export {CKPT} a-file", "OUT is a file", names="a-file"),
    Case("export text out-c --all", "--all on a folder without checkpoints", names="text"),
    Case(f"export {RUN} out-d --all --every 0", "--every 0", names="every"),
    Case(f"export {CKPT} out-e --tokenizer no-such-tokenizer", "a tokenizer that does not exist",
         names="no-such-tokenizer"),
    Case(f"export {CKPT} out-f --model giant", "an unknown model preset", names="giant"),
    Case(f"average {CKPT} out-g", "averaging one checkpoint (the checkpoint itself, exported)", expect="succeed"),
    # finetune
    Case(f"finetune missing-task.yaml {HF}", "the task file does not exist", names="missing-task.yaml"),
    Case(f"finetune task-metric.yaml {HF}", "an unknown metric", names="bleu"),
    Case("finetune task.yaml no-such-model", "the model does not exist", names="no-such-model"),
    Case("finetune task.yaml text", "a folder that is not a model", names="text"),
    Case(f"finetune task-no-split.yaml {HF}", "a split file that does not exist", names="missing.jsonl"),
    Case(f"finetune task-bad-label.yaml {HF} --out ft-bad", "labels not among head.labels", names="label"),
    Case(f"finetune task.yaml {HF} --seeds 0", "zero seeds", names="seeds"),
    Case(f"finetune task-beir.yaml {HF}", "a BEIR folder that does not exist", names="no-beir"),
    # report, plan, eval
    Case("report no-such-run", "the run folder does not exist", names="no-such-run"),
    Case("report text", "a folder that is not a run", names="text"),
    Case(f"report {RUN} --tasks missing-task.yaml", "a task that does not exist", names="missing-task.yaml"),
    Case(f"report {RUN} --tasks task.yaml --set no-colon", "a --set without TASK:", names="no-colon"),
    Case(f"report {RUN} --every -5", "a negative --every", names="every"),
    Case(f"report {RUN} --tasks task.yaml --seeds 0", "zero seeds", names="seeds"),
    Case(f"plan {CONFIG} --ranks 0", "zero ranks", names="ranks"),
    Case(f"eval mlm {HF} --data no-such-data", "held-out data that does not exist", names="no-such-data"),
    Case("eval mlm no-such-model --data audit-mds", "a model that does not exist", names="no-such-model"),
]


def run_case(case: Case, ws: Path) -> dict:
    result = subprocess.run([BERTFORGE, *case.command.split()], cwd=ws, capture_output=True, text=True, timeout=600,
                            check=False)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    traceback = "Traceback" in result.stderr
    last = lines[-1] if lines else ""
    if case.expect == "succeed":
        clean = result.returncode == 0
    else:
        clean = result.returncode == 2 and not traceback and case.names in last
    return {"command": f"bertforge {case.command}", "fault": case.fault, "exit": result.returncode,
            "traceback": traceback, "said": last[:300], "verdict": "clean" if clean else "open"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", default="/tmp/bertforge-audit")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--only", help="run the cases whose command holds this text")
    args = parser.parse_args()
    ws = Path(args.workspace)
    ws.mkdir(parents=True, exist_ok=True)
    if not (ws / RUN / "hf" / "config.json").is_file():
        subprocess.run([BERTFORGE, "quickstart", "--small"], cwd=ws, check=True)
    write_files(ws)
    results = []
    for case in CASES:
        if args.only and args.only not in case.command:
            continue
        for leftover in ws.glob("out-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        row = run_case(case, ws)
        results.append(row)
        print(f"| {len(results)} | `{row['command']}` | {row['fault']} | exit {row['exit']}"
              f"{', traceback' if row['traceback'] else ''}: {row['said']} | {row['verdict']} |", flush=True)
    clean = sum(r["verdict"] == "clean" for r in results)
    print(f"{clean} clean, {len(results) - clean} open, of {len(results)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
