"""What `bertforge train` costs over a bare PyTorch loop: the same model, initial weights, packed batches and
optimizer, stepped by hand, against the real trainer (Composer, callbacks, metrics, a checkpoint at the end), in
one run of this script, as a ratio of real tokens/s.

    python bench/train_overhead.py                                  # quickstart config (tiny model, CPU)
    python bench/train_overhead.py --config RUN.yaml --tokens 200000 --json OUT.json -- model.mlm_loss_chunk=1024

The trainer runs first, in its own process and save folder; the bare loop then takes as many steps from the same
loader in this process, twice (their spread is the machine's noise). Both sides count the wall-clock of whole steps,
data loading included, over the steps after --skip (start-up, the first eval and compilation left out): tokens
over seconds. Goal: overhead at most 5%.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from composer.utils import reproducibility
from train_throughput import run as run_trainer

from bertforge.data.loader import MODEL_INPUTS
from bertforge.train.config import load_train_config
from bertforge.train.optim import build_optimizer
from bertforge.train.precision import autocast, cpu_bf16_units, resolve_precision
from bertforge.train.run import build_data, build_model


def bare_loop(config, steps: int, device: torch.device, compiled: bool) -> list[dict]:
    """``steps`` optimizer steps of the run's model over its loader's steps: each micro-batch's loss weighed by
    its share of the step's masked tokens (as Composer does with accumulate_train_batch_on_tokens)."""
    reproducibility.seed_all(config.seed)  # as the trainer does: the same initial weights
    _, batches = build_data(config, 1)
    model, _ = build_model(config)
    model.to(device).train()
    optimizer = build_optimizer(model, config.optimizer)
    forward = torch.compile(model) if compiled else model
    precision = resolve_precision(config.precision, "gpu" if device.type == "cuda" else "cpu", cpu_bf16_units())
    rows, batch_iter = [], iter(batches)
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(batch_iter)
        loss = 0.0
        for micro in batch["micro_batches"]:
            with autocast(precision, device.type):  # as the trainer casts (train/precision.py)
                out = forward(**{key: micro[key].to(device) if isinstance(micro[key], torch.Tensor) else micro[key]
                                 for key in MODEL_INPUTS})
            weighed = out.loss * (micro["num_masked"] / batch["num_masked"])
            weighed.backward()
            loss += float(weighed)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        rows.append({"tokens": batch["num_tokens"], "s": elapsed, "loss": loss})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="yamls/quickstart.yaml")
    parser.add_argument("--tokens", type=int, default=81920, help="length of the trainer's run in real tokens")
    parser.add_argument("--skip", type=int, default=5, help="steps left out (start-up, the first eval, compile)")
    parser.add_argument("--json", help="also write the summary here")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the run config (after --)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = load_train_config(args.config, args.overrides)
    compiled = config.compiled_on("gpu" if device.type == "cuda" else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        trainer = run_trainer(args.config, args.tokens, compiled, args.overrides, Path(tmp) / "run")
    steps = [row for row in trainer["rows"] if "event" not in row]
    if len(steps) <= args.skip:
        raise SystemExit(f"the run took {len(steps)} steps, not more than --skip {args.skip}: raise --tokens")
    # metrics.jsonl's cumulative tokens and seconds over the steps after --skip.
    first, last = steps[args.skip - 1], steps[-1]
    ours = (last["tokens"] - first["tokens"]) / (last["time"] - first["time"])
    # The bare loop twice, after the trainer: the spread between the two is the machine's noise.
    bare = [bare_loop(config, len(steps), device, compiled) for _ in range(2)]
    rates = [sum(r["tokens"] for r in run[args.skip:]) / sum(r["s"] for r in run[args.skip:]) for run in bare]
    theirs = statistics.mean(rates)
    summary = {
        "config": args.config, "overrides": args.overrides, "device": str(device), "compiled": compiled,
        "steps": len(steps), "skip": args.skip,
        "trainer_tokens_per_s": ours, "bare_tokens_per_s": theirs, "bare_runs_tokens_per_s": rates,
        "trainer_over_bare": ours / theirs, "overhead": 1 - ours / theirs,
        "first_losses": {"trainer": steps[0]["loss"], "bare": bare[0][0]["loss"]},
        "versions": {"python": platform.python_version(),
                     **{name: version(name) for name in ("torch", "mosaicml", "mosaicml-streaming")}},
    }
    print(f"{args.config} on {device}{' (compiled)' if compiled else ''}: {len(steps)} steps, real tokens/s over "
          f"the steps after {args.skip}")
    print(f"  bertforge train {ours:,.0f}   bare loop {theirs:,.0f} (two runs: {rates[0]:,.0f}, {rates[1]:,.0f})")
    print(f"  ratio {ours / theirs:.3f}: overhead {1 - ours / theirs:+.1%} (goal: at most +5%)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
