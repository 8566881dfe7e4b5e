"""Short `bertforge train` runs of one config over a grid of overrides: the final held-out MLM loss of each, its
steady tokens/s, and the mean and seed range of each variant. Used for two CPU questions (docs/training.md
"Precision" and docs/finetune.md "The small CPU recipe"):

    # does bf16 autocast on this CPU train as well as float32, and how much faster? (2M tokens, 2 seeds)
    python bench/cpu_sweep.py --config yamls/transfer/pretrain-tiny.yaml --tokens 2000000 --seeds 17 18 \\
        --variant fp32 precision=fp32 --variant bf16 precision=amp_bf16 --json bench/results/cpu_bf16.json
    # the small recipe's sweep: LR, batch and mask rate, 1M tokens each
    python bench/cpu_sweep.py --config yamls/transfer/pretrain-tiny.yaml --tokens 1000000 --seeds 17 \\
        --variant lr1e-3 --variant lr2e-3 optimizer.lr=2e-3 ... --json bench/results/cpu_sweep_tiny.json

Every run is a fresh process and save folder under --workdir (kept, so a rerun skips the runs that finished and a
killed sweep loses at most the run in hand). The schedule's decay is set to the last --decay-share of each run,
so short runs end decayed as a real run does. --json is rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run(config: str, tokens: int, overrides: list[str], folder: Path, decay_share: float) -> dict:
    """One run (or its earlier result, when its folder holds a finished one): final held-out loss, tokens/s."""
    metrics = folder / "metrics.jsonl"
    done = folder / "done.json"
    if done.is_file():
        return json.loads(done.read_text())
    bertforge = str(Path(sys.executable).with_name("bertforge"))
    command = [bertforge, "train", config, f"max_duration={tokens}tok", f"save_folder={folder}", "export_dir=null",
               f"checkpoint.interval={tokens}tok", "checkpoint.keep=1",
               f"schedule.decay_tokens={int(tokens * decay_share)}", f"eval.interval={tokens}tok", *overrides]
    print(" ".join(command[1:]), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"run failed ({folder}):\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    evals = [r for r in rows if r.get("event") == "eval"]
    steady = steps[len(steps) // 10:] or steps
    precision = next((line for line in result.stdout.splitlines() if line.startswith("precision:")), None)
    summary = {"final_eval_loss": evals[-1]["loss"], "final_eval_accuracy": evals[-1]["accuracy"],
               "tokens": steps[-1]["tokens"], "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
               "train_s": steps[-1]["time"], "precision_line": precision}
    done.write_text(json.dumps(summary))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="yamls/transfer/pretrain-tiny.yaml")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="length of each run in real tokens")
    parser.add_argument("--seeds", type=int, nargs="+", default=[17])
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar=("NAME", "KEY=VALUE"),
                        help="a variant's name and its overrides (repeat)")
    parser.add_argument("--decay-share", type=float, default=0.2, help="share of each run the LR decays over")
    parser.add_argument("--workdir", default="runs/cpu-sweep")
    parser.add_argument("--json", help="write the rows and the summary here")
    args = parser.parse_args()
    rows, summary = [], []
    for name, *overrides in args.variant:
        for seed in args.seeds:
            folder = Path(args.workdir) / f"{name}-seed{seed}-{args.tokens}"
            result = run(args.config, args.tokens, [*overrides, f"seed={seed}"], folder, args.decay_share)
            rows.append({"variant": name, "overrides": overrides, "seed": seed, **result})
            print(f"{name} seed {seed}: held-out loss {result['final_eval_loss']:.4f}, "
                  f"{result['tokens_per_s']:,.0f} tok/s", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"config": args.config, "tokens": args.tokens, "rows": rows},
                                                      indent=1))
        mine = [r for r in rows if r["variant"] == name]
        losses = [r["final_eval_loss"] for r in mine]
        summary.append({"variant": name, "overrides": overrides, "mean_loss": statistics.mean(losses),
                        "loss_range": max(losses) - min(losses),
                        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in mine)})
    reference = summary[0]
    print(f"\n{args.config}, {args.tokens:,} tokens a run, seeds {args.seeds}")
    print("| variant | overrides | held-out loss (mean) | seed range | tokens/s | speed vs first |")
    print("|---|---|---:|---:|---:|---:|")
    for row in summary:
        row["speed_ratio"] = row["tokens_per_s"] / reference["tokens_per_s"]
        print(f"| {row['variant']} | {' '.join(row['overrides']) or '-'} | {row['mean_loss']:.4f} | "
              f"{row['loss_range']:.4f} | {row['tokens_per_s']:,.0f} | {row['speed_ratio']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "tokens": args.tokens, "seeds": args.seeds,
                                               "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
