"""Real tokens/s and MFU of a short `bertforge train` run, as its throughput callback reports them, with and
without torch.compile.

    python bench/train_throughput.py                       # quickstart config (tiny model, CPU)
    python bench/train_throughput.py --config RUN.yaml --tokens 20000000 -- precision=amp_bf16

Each variant is a real run in a fresh process and save folder (checkpoints only at the end). Reported: wall
time, the median of metrics.jsonl's per-step tokens/s and MFU over the steps after --skip (compilation and
start-up excluded), and the ratio of compiled to eager.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bertforge.checkpoint.run_folder import RunFolder


def run(config: str, tokens: int, compiled: bool, overrides: list[str], folder: Path) -> dict:
    bertforge = str(Path(sys.executable).with_name("bertforge"))
    start = time.perf_counter()
    result = subprocess.run([bertforge, "train", config, f"max_duration={tokens}tok",
                             f"compile={str(compiled).lower()}",
                             f"save_folder={folder}", "export_dir=null", "checkpoint.interval=1000000ba",
                             "log_interval=1", *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"run failed:\n{result.stderr[-3000:]}")
    metrics = RunFolder(folder).metrics
    return {"wall_s": wall, "rows": [json.loads(line) for line in metrics.read_text().splitlines()]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="yamls/quickstart.yaml")
    parser.add_argument("--tokens", type=int, default=40960, help="length of each run in real tokens")
    parser.add_argument("--skip", type=int, default=5, help="steps left out of the medians (start-up, compile)")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the run config (after --)")
    args = parser.parse_args()
    summary = []
    print(f"{args.config}, {args.tokens} tokens per run, medians over steps after {args.skip}")
    print(f"{'variant':8} {'wall s':>7} {'steps':>5} {'tok/s':>9} {'tok/s/device':>12} {'MFU':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for compiled in (False, True):
            name = "compile" if compiled else "eager"
            result = run(args.config, args.tokens, compiled, args.overrides, Path(tmp) / name)
            steady = result["rows"][args.skip:] or result["rows"]
            mfu = [r["mfu"] for r in steady if r["mfu"] is not None]
            row = {"variant": name, "wall_s": result["wall_s"], "steps": len(result["rows"]),
                   "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
                   "tokens_per_s_per_device": statistics.median(r["tokens_per_s_per_device"] for r in steady),
                   "mfu": statistics.median(mfu) if mfu else None}
            summary.append(row)
            shown_mfu = "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
            print(f"{name:8} {row['wall_s']:>7.1f} {row['steps']:>5} {row['tokens_per_s']:>9,.0f} "
                  f"{row['tokens_per_s_per_device']:>12,.0f} {shown_mfu:>6}", flush=True)
    print(f"compile / eager tokens/s: {summary[1]['tokens_per_s'] / summary[0]['tokens_per_s']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
